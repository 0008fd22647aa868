"""DVC stage `check`: see `--help`; the work is in the ptblm library."""

from ptblm.commands.check import check_command as command

if __name__ == "__main__":
    command()
