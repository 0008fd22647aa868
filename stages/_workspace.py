"""Put this workspace's `src/` first on `sys.path`, before any stage imports ptblm.

DVC runs queued experiments in temporary copies of the repository. With ptblm installed
editable from the main checkout, `import ptblm` would otherwise run the main checkout's
code as it is when the import happens, not the copy DVC hashed as the stage's deps.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
