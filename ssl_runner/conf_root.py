"""Where the config tree `conf/` is: one place for every reader (the CLI,
the data sets' configs, the presets' expected results), in a module with no
side effects (ssl_runner/__main__.py registers resolvers when imported)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> str:
    """`conf/` beside the package (a source checkout or an editable install),
    else the copy installed as `ssl_runner/conf`."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"ssl_runner's config tree is missing (looked in {here.parent / 'conf'} and {here / 'conf'})")
