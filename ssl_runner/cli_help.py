"""The text of `python -m ssl_runner --help`, from the facts it describes.

Hydra prints its help template (conf/config.yaml, `hydra.help.template`),
whose resolvers (registered in ssl_runner/__main__.py) call `help_overview`
and `config_groups_text` here. Each fact is read from its one place: the
methods, their papers and kinds from the method registry; the stages from
the stage registry; a preset's description and cost from the first comment
line of its `conf/experiment/<preset>.yaml` (`# <description>; <cost>`); the
groups and their options from the files in `conf/`; the default options from
conf/config.yaml's defaults list. Nothing here runs unless `--help` asks.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import OmegaConf

WIDTH = 100

DESCRIPTION = """\
ssl-runner: self-supervised learning experiments for images.

One command pretrains an encoder without labels, then evaluates it with the
stages chained after it (kNN and a linear probe by default; fine-tuning and
probes on request), and leaves everything in one run folder,
outputs/<date>/<time>_<method>/: the resolved config, each stage's checkpoints
and metrics, and summary.json. CIFAR-10 is read from $SSL_RUNNER_DATA/cifar10
(default ./data/cifar10) and downloaded there if absent; data=cifar100 and
data=stl10 likewise, data=imagefolder from any train/<class>/ tree.

On a machine without a GPU, a command that names no experiment runs the
cifar10_cpu preset (a short real run on the CPU); name one to choose another,
experiment=none for the full default config."""

# (command, what it shows)
EXAMPLES: Tuple[Tuple[str, str], ...] = (
    ("python -m ssl_runner method=simclr data=cifar10", "the main command"),
    ("python -m ssl_runner method=byol experiment=smoke", "a preset (Presets below)"),
    ("python -m ssl_runner experiment=simclr_cifar10", "a paper's recipe, for a GPU"),
    ("python -m ssl_runner -m method=simclr,byol experiment=smoke", "a sweep: one job per value, results.md"),
    ("python -m ssl_runner -m hparams_search=simclr_optuna experiment=smoke",
     "an Optuna search in SQLite; rerun to resume (pip install -e '.[sweeps]')"),
    ("python -m ssl_runner pipeline=eval checkpoint=outputs/.../pretrain/encoder.pt",
     "evaluate an existing encoder"),
    ("python -m ssl_runner method=simclr hydra.run.dir=outputs/<date>/<time>_simclr",
     "resume: the same command and run folder; finished stages are skipped"),
)

# The options of a group that holds settings, not a choice (eval, monitor):
# a user changes its keys (eval.linear.epochs=30) instead.
SETTINGS_ONLY = ["default"]
# Folders of conf/ that are not config groups: Hydra's own, and the presets'
# expected results (conf/expected/<preset>.yaml, read by ssl_runner/expected.py).
INTERNAL_GROUPS = ("hydra", "__pycache__", "expected")


def _section(title: str, lines: List[str]) -> str:
    return "\n".join([f"== {title} ==", *lines])


def _wrapped(name: str, text: str, name_width: int) -> List[str]:
    """`  name  text`, the text wrapped under itself."""
    indent = " " * (name_width + 4)
    return _wrap(text, initial_indent=f"  {name:<{name_width}}  ", subsequent_indent=indent)


def _wrap(text: str, **indents: str) -> List[str]:
    # Never at a hyphen: CIFAR-10, 2-job and non-contrastive stay whole.
    return textwrap.wrap(text, WIDTH, break_on_hyphens=False, **indents)


def example_lines() -> List[str]:
    """Each command under its note, so that it can be copied whole."""
    return [line for command, note in EXAMPLES for line in (f"  # {note}", f"  {command}")]


def method_lines() -> List[str]:
    """One line per registered method, in the registry's (the README's) order."""
    import ssl_runner.methods  # noqa: F401  (registers every method)
    from ssl_runner.methods.registry import METHOD_INFO

    width = max(map(len, METHOD_INFO))
    return [f"  {name:<{width}}  {info.paper} - {info.kind}" for name, info in METHOD_INFO.items()]


def stage_lines() -> List[str]:
    from ssl_runner.stages import stage_names

    return _wrap("Stages a pipeline chains (pipeline=NAME, or any list: pipeline.stages=[...]): "
                 + ", ".join(stage_names()))


def preset_summary(path: Path) -> Optional[Tuple[str, str]]:
    """(description, cost) from a preset's first comment line after Hydra's
    `# @package` directives: `# <one-line description>; <cost>`. None when
    the file has no such line."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.lstrip("#").strip().startswith("@"):
            continue
        if not line.startswith("#"):
            return None
        description, sep, cost = line.lstrip("#").strip().partition("; ")
        return (description, cost) if sep and description and cost else None
    return None


def presets(conf_root: Path, group: str = "experiment") -> Dict[str, Optional[Tuple[str, str]]]:
    """Every preset of `group` (conf/<group>/*.yaml; the per-method adjustment
    folders are not presets) with its summary."""
    return {path.stem: preset_summary(path) for path in sorted((conf_root / group).glob("*.yaml"))}


def preset_lines(conf_root: Path, group: str = "experiment") -> List[str]:
    found = presets(conf_root, group)
    width = max(map(len, found))
    lines = []
    for name, summary in found.items():
        text = (f"{summary[0]}. Cost: {summary[1]}." if summary else
                f"(no summary: give conf/{group}/{name}.yaml a first comment line '# <description>; <cost>')")
        lines += _wrapped(name, text, width)
    if group != "experiment":
        return lines
    adjusted = sorted(d for d in (conf_root / "experiment").iterdir() if d.is_dir() and any(d.glob("*.yaml")))
    if adjusted:
        listed = ", ".join(f"{d.name} ({', '.join(sorted(f.stem for f in d.glob('*.yaml')))})" for d in adjusted)
        lines += [""] + _wrap(
            "Per-method adjustments, applied by themselves after the preset (conf/experiment/<preset>/<method>.yaml): "
            + listed, initial_indent="  ", subsequent_indent="  ")
    return lines


def defaults_list(conf_root: Path) -> Dict[str, Optional[str]]:
    """group -> the option conf/config.yaml's defaults list picks (None: none
    unless asked), in its order; overrides and packaged entries left out."""
    defaults = OmegaConf.to_container(OmegaConf.load(conf_root / "config.yaml"), resolve=False)["defaults"]
    return {key: value for entry in defaults if isinstance(entry, dict)
            for key, value in entry.items() if " " not in key and "@" not in key}


def config_groups(conf_root: Path) -> Dict[str, List[str]]:
    """Every group of `conf/` with its options, in the order of the defaults
    list (the rest sorted after it); Hydra's own groups left out."""
    groups = {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in conf_root.iterdir()
              if d.is_dir() and d.name not in INTERNAL_GROUPS}
    order = list(defaults_list(conf_root))
    return dict(sorted(((g, o) for g, o in groups.items() if o),
                       key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0])))


def chosen_groups(conf_root: Path) -> Dict[str, List[str]]:
    """The groups a user chooses an option of: not those that hold settings only."""
    return {group: options for group, options in config_groups(conf_root).items() if options != SETTINGS_ONLY}


def config_groups_text(conf_root: Path) -> str:
    """`group: option, option (default), ...` for each group a user chooses, then those holding settings only."""
    defaults, chosen = defaults_list(conf_root), chosen_groups(conf_root)
    lines = []
    for group, options in chosen.items():
        named = [f"{option} (default)" if defaults.get(group) == option else option for option in options]
        lines += _wrap(f"{group}: {', '.join(named)}", subsequent_indent="    ")
    settings = [group for group in config_groups(conf_root) if group not in chosen]
    if settings:
        lines += [""] + _wrap("Settings, not a choice (change their keys, e.g. eval.linear.epochs=30): "
                              + ", ".join(settings))
    return template_safe("\n".join(lines))


def help_overview(conf_root: Path) -> str:
    """Everything `--help` prints before the groups: description, examples, methods, presets, stages."""
    text = "\n\n".join([
        DESCRIPTION,
        _section("Examples", example_lines()),
        _section("Methods (method=NAME: paper - kind)", method_lines()),
        _section("Presets (experiment=NAME)", preset_lines(conf_root)),
        _section("Searches (-m hparams_search=NAME; docs/sweeps.md)", preset_lines(conf_root, "hparams_search")),
        "\n".join(stage_lines()),
    ])
    return template_safe(text + "\n")


def template_safe(text: str) -> str:
    """Hydra fills its help template with string.Template, where a literal $ is written $$."""
    return text.replace("$", "$$")
