"""DVC stage `adapt`: see `--help`; the work is in the ptblm library."""

import _workspace  # noqa: F401  (first: this workspace's src/, not an installed copy)

from ptblm.commands.adapt import adapt_command as command

if __name__ == "__main__":
    command()
