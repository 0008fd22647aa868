"""DVC stage `evaluate`: see `python stages/evaluate.py --help`; the work is in the ptblm library."""

from ptblm.cli import evaluate_command as command

if __name__ == "__main__":
    command()
