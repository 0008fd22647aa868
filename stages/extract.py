"""DVC stage `extract`: see `--help`; the work is in the ptblm library."""

from ptblm.cli import extract as command

if __name__ == "__main__":
    command()
