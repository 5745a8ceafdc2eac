"""Exit with a clear message when this Python cannot run the pinned lab environment."""
import sys

SUPPORTED = [(3, 11), (3, 12), (3, 13)]  # the pins in requirements-lab.txt have wheels for these; 3.11 is tested

if sys.version_info[:2] not in SUPPORTED:
    have = '.'.join(map(str, sys.version_info[:3]))
    want = ', '.join(f'{a}.{b}' for a, b in SUPPORTED)
    sys.exit(f"llm_lab's lab environment needs Python {want} (3.11 is the tested one); this is Python {have} "
             f"at {sys.executable}.\nInstall a supported Python (python.org, pyenv, conda or uv) and run "
             f"e.g. `make lab PYTHON=python3.11`.")
