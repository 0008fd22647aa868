"""DVC stage `evaluate`: see `--help`; the work is in the ptblm library."""

from ptblm.commands.evaluate import evaluate_command as command

if __name__ == "__main__":
    command()
