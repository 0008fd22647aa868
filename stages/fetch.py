"""DVC stage `fetch`: see `--help`; the work is in the ptblm library."""

from ptblm.commands.fetch import fetch as command

if __name__ == "__main__":
    command()
