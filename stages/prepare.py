"""DVC stage `prepare`: see `--help`; the work is in the ptblm library."""

from ptblm.commands.prepare import prepare as command

if __name__ == "__main__":
    command()
