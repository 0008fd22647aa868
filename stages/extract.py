"""DVC stage `extract`: see `--help`; the work is in the ptblm library."""

from ptblm.commands.extract import extract as command

if __name__ == "__main__":
    command()
