"""DVC stage `train`: see `--help`; the work is in the ptblm library."""

from ptblm.commands.train import train_command as command

if __name__ == "__main__":
    command()
