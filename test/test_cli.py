"""The command-line layer of every entry point: bad input is one line and exit status 2 with no
output folder left, --help and --print_config list the settings with their defaults, dotted
options reach the settings (model ones on the preset's values), --version, -v / -q."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmseg_model import __version__, benchmark, convert_official, demo, train
from llmseg_model.cli import Command, configure_logging, parse_command, run_command
from llmseg_model.config import LLMSegConfig, VlmConfig, from_mapping, tiny_config
from llmseg_model.configuration import Option, field_comments, normalise_argv
from llmseg_model.data import proposal_cache
from llmseg_model.datagen import generate
from llmseg_model.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/llmseg-test-path"


@pytest.fixture(autouse=True)
def package_log_levels():
    """Commands set the package loggers' levels (-v / -q); give other tests theirs back."""
    loggers = [logging.getLogger(name) for name in ("llmseg_model", "llmseg_ros", "httpx")]
    levels = [lg.level for lg in loggers]
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


def _datagen_config(tmp_path: Path, out: Path) -> Path:
    (tmp_path / "lvis.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    path = tmp_path / "datagen.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(out), "sources": [{"annotations": str(tmp_path / "lvis.json")}]}))
    return path


def commands(tmp_path: Path) -> dict[str, tuple[Command, list[str], Path]]:
    """Each entry point with a command line that is valid as it stands, and its output folder."""
    out = tmp_path / "out"
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    return {
        "train": (train.COMMAND, ["--config", str(REPO / "config" / "train_tiny.yaml"), "--output_dir", str(out)], out),
        "benchmark": (benchmark.COMMAND, ["--output-dir", str(out), "--data", "procedural:test,size=1"], out),
        "demo": (demo.COMMAND, ["--out", str(out)], out),
        "precompute": (proposal_cache.COMMAND,
                       ["--cache-dir", str(out), "--data", "procedural:test,size=1", "--random-sam-weights"], out),
        "datagen": (generate.COMMAND, ["--config", str(_datagen_config(tmp_path, out))], out),
        "convert": (convert_official.COMMAND, ["--clip", str(folder), "--llava-base", str(folder), "--out", str(out)], out),
    }


# One bad input of each sort per entry point (None: the command has no setting of that sort).
BAD = {
    "train": {"unknown key": ["--stpes", "3"], "wrong type": ["--lr", "abc"], "out of range": ["--steps", "0"],
              "missing path": ["--model.weights.llava_path", MISSING], "bad enum": ["--model.vlm.answer_mode", "bogus"]},
    "benchmark": {"unknown key": ["--metods", "llmseg"], "wrong type": ["--warmup", "x"],
                  "out of range": ["--random_prob", "2"], "missing path": ["--cache_dir", MISSING],
                  "bad enum": ["--scoring", "bogus"]},
    "demo": {"unknown key": ["--scenes", "1"], "wrong type": ["--scene", "x"], "out of range": ["--scene", "-1"],
             "missing path": ["--image", MISSING], "bad enum": ["--model.fusion.variant", "bogus"]},
    "precompute": {"unknown key": ["--shards", "1/2"], "wrong type": ["--seed", "x"],
                   "out of range": ["--model.proposals.top_k", "0"], "missing path": ["--data", f"reasonseg:{MISSING}"],
                   "bad enum": ["--model.proposals.lowres_layout", "bogus"]},
    "datagen": {"unknown key": ["--limitt", "1"], "wrong type": ["--limit", "x"],
                "out of range": ["--backend.concurrency", "0"],
                "missing path": ["--sources", json.dumps([{"annotations": MISSING}])],
                "bad enum": ["--backend.kind", "gpt"]},
    "convert": {"unknown key": ["--chekpoint", "x"], "wrong type": ["--allow_global", "{a: 1}"], "out of range": None,
                "missing path": ["--llava_base", MISSING], "bad enum": None},
}


def _cases():
    for name, sorts in BAD.items():
        for sort, argv in sorts.items():
            if argv is not None:
                yield pytest.param(name, argv, id=f"{name}-{sort.replace(' ', '_')}")


@pytest.mark.parametrize("name, extra", list(_cases()))
def test_bad_input_is_one_line_and_exit_2_with_no_output(tmp_path, capsys, name, extra):
    command, argv, out = commands(tmp_path)[name]
    with pytest.raises(SystemExit) as refused:
        run_command(command, [*argv, *extra], prog=command.name)
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{command.name}: error: "), err
    assert "Traceback" not in err
    assert not out.exists()


def test_messages_name_the_setting(tmp_path, capsys):
    command, argv, _ = commands(tmp_path)["train"]
    for extra, named in ((["--model.vlm.lora_r", "0"], "model.vlm.lora_r must be >= 1"),
                         (["--lr", "abc"], "--lr: expected float"),
                         (["--model.weights.llava_path", MISSING], "model.weights.llava_path"),
                         (["--datasets", '[{"kind": "procedural", "size": "a"}]'], "datasets"),
                         (["--model.features.layout", "letterbox"], "proposals.lowres_layout")):
        with pytest.raises(SystemExit):
            run_command(command, [*argv, *extra], prog="llmseg-train")
        assert named in capsys.readouterr().err


def test_train_without_a_config_says_what_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        train.main([], prog="llmseg-train")
    assert refused.value.code == 2
    assert "--config" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["train", "benchmark", "demo", "precompute", "datagen", "convert"])
def test_help_lists_the_settings_with_defaults(tmp_path, capsys, name):
    command, _, _ = commands(tmp_path)[name]
    with pytest.raises(SystemExit) as done:
        run_command(command, ["--help"], prog=command.name)
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {command.name} ")
    assert "--print_config" in text and "--version" in text and "-v, --verbose" in text
    first = next(f for f in command.config.__dataclass_fields__.values() if f.name != command.model_field)
    assert f"--{first.name}" in text and "default:" in text
    if command.model_field:
        assert f"--{command.model_field}.proposals.top_k" in text


def test_help_shows_comments_choices_bounds_and_the_presets_values(capsys):
    with pytest.raises(SystemExit):
        run_command(train.COMMAND, ["--preset", "paper", "--help"], prog="llmseg-train")
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS optimizer steps (>= 1) (type: int, default: 1000)" in text
    assert "--model.vlm.answer_mode {given,verified,generate}" in text
    assert "default: given" in text and "model.vlm (values of preset 'paper' unless given)" in text
    assert "Which last-layer hidden state becomes the <SEG> embedding" in text  # a comment above the field


@pytest.mark.parametrize("name", ["train", "benchmark", "demo", "precompute", "datagen", "convert"])
def test_print_config_round_trips(tmp_path, capsys, name):
    command, argv, out = commands(tmp_path)[name]
    assert run_command(command, [*argv, "--print-config"], prog=command.name) is None
    printed = capsys.readouterr().out
    settings = yaml.safe_load(printed)
    assert set(settings) == {f for f in command.config.__dataclass_fields__}
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    run_command(command, ["--config", str(saved), "--print-config"], prog=command.name)
    assert capsys.readouterr().out == printed
    assert not out.exists()


def test_dotted_options_reach_the_settings_on_the_presets_values(tmp_path):
    command, argv, _ = commands(tmp_path)["train"]
    parsed = parse_command(command, [*argv, "--lr", "1e-4", "--model.vlm.answer_mode", "given", "--betas", "[0.8, 0.9]",
                                     "--model.selection.iop_threshold=0.4", "-q"])
    config: TrainConfig = parsed.config
    assert config.lr == pytest.approx(1e-4) and config.betas == (0.8, 0.9) and config.steps == 5900  # from the YAML
    model = config.model_config()
    assert model.vlm.answer_mode == "given" and model.selection.iop_threshold == 0.4
    assert (model.fusion.dim, model.fusion.iop_hidden) == (128, 64) and model.vlm.seg_token == "<SEG>"  # the tiny preset's, untouched
    assert parsed.verbosity == -1
    # (with --print_config: paths are not checked, the paper weights are not here)
    paper = parse_command(benchmark.COMMAND, ["--preset", "paper", "--print_config"]).config.model_config()
    assert paper.vlm.answer_mode == "given" and paper.fusion.variant == "published"


def test_model_settings_in_a_yaml_apply_on_the_preset(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text("preset: tiny\nmodel: {vlm: {answer_mode: generate}}\nmethods: [llmseg]\n")
    config = parse_command(benchmark.COMMAND, ["--config", str(path), "--model.selection.max_instances", "3"]).config
    model = config.model_config()
    assert (model.vlm.answer_mode, model.selection.max_instances, model.fusion.dim) == ("generate", 3, 128)
    assert config.methods == ["llmseg"]


def test_list_options_repeat_or_take_several_words(tmp_path):
    config = parse_command(benchmark.COMMAND, ["--methods", "llmseg", "random", "--modes", "first",
                                               "--data", "procedural:test,size=2", "--data", "procedural:val,size=1"]).config
    assert config.methods == ["llmseg", "random"] and config.modes == ["first"]
    assert [(d.split, d.size) for d in config.datasets] == [("test", 2), ("val", 1)]
    instructions = parse_command(demo.COMMAND, ["--instruction", "the red ball", "--instruction", "a: colon"]).config
    assert instructions.instruction == ["the red ball", "a: colon"]


def test_normalise_argv_spellings():
    options = [Option("cache_dir", "value"), Option("progress", "bool"), Option("skip_errors", "bool"),
               Option("data", "list")]
    assert normalise_argv(["--cache-dir", "c", "--no-progress", "--skip-errors", "--data", "a", "--data", "b"], options) == [
        "--cache_dir", "c", "--progress=false", "--skip_errors=true", '--data=["a"]', "--data+=b"]
    assert normalise_argv(["--skip_errors", "false", "--data=[x, y]", "-v"], options) == [
        "--skip_errors=false", "--data=[x, y]", "-v"]


def test_version(capsys):
    for command in (train.COMMAND, generate.COMMAND):
        with pytest.raises(SystemExit) as done:
            run_command(command, ["--version"], prog=command.name)
        assert done.value.code == 0 and capsys.readouterr().out.strip() == f"{command.name} {__version__}"


def test_a_refused_run_removes_the_folder_it_created_unless_it_holds_work(tmp_path, capsys):
    from dataclasses import dataclass

    @dataclass
    class Job:
        out: str = ""
        checkpoint: bool = False  # the run leaves something worth keeping before it fails

    def run(job: Job) -> None:
        Path(job.out).mkdir()
        (Path(job.out) / ("checkpoint-1" if job.checkpoint else "partial.json")).write_text("{}")
        raise ValueError("sample 3 has no mask")

    command = Command(name="job", module="job", config=Job, run=run, outputs=lambda job: [job.out],
                      keep=lambda folder: (folder / "checkpoint-1").exists())
    for keep in (False, True):
        out = tmp_path / f"out{keep}"
        with pytest.raises(SystemExit) as refused:
            run_command(command, ["--out", str(out), "--checkpoint", str(keep).lower(), "-q"], prog="job")
        assert refused.value.code == 2 and "sample 3 has no mask" in capsys.readouterr().err
        assert out.exists() == keep
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(SystemExit):  # a folder that was there before is never removed
        run_command(command, ["--out", str(existing / "sub"), "-q"], prog="job")
    assert existing.is_dir()


def test_verbosity_sets_package_levels_and_quiets_transformers():
    from transformers.utils import logging as hf_logging

    configure_logging(-1)
    assert logging.getLogger("llmseg_model").level == logging.WARNING
    configure_logging(1)
    assert logging.getLogger("llmseg_model").level == logging.DEBUG
    configure_logging(0, uses_transformers=True)
    assert logging.getLogger("llmseg_ros").level == logging.INFO
    assert hf_logging.get_verbosity() == hf_logging.ERROR and not hf_logging.is_progress_bar_enabled()
    configure_logging(1, uses_transformers=True)
    assert hf_logging.get_verbosity() == hf_logging.WARNING and hf_logging.is_progress_bar_enabled()
    configure_logging(0, uses_transformers=True)


def test_library_configs_share_the_checks():
    with pytest.raises(ValueError, match="vlm.answer_mode must be one of given, verified, generate"):
        VlmConfig(answer_mode="bogus")
    with pytest.raises(ValueError, match="vlm.lora_r must be an integer"):
        LLMSegConfig.from_dict({"vlm": {"lora_r": "8"}})
    with pytest.raises(ValueError, match="model.fusion.depth must be >= 1"):
        TrainConfig.from_dict({"model": {"fusion": {"depth": 0}}})
    with pytest.raises(ValueError, match=r"val_datasets\[0\]: missing setting\(s\) \['kind'\]"):
        TrainConfig.from_dict({"val_datasets": [{"size": 3}]})
    with pytest.raises(ValueError, match="needs proposals.lowres_layout"):
        from_mapping(LLMSegConfig, {"preset": "tiny", "features": {"layout": "letterbox"}, "proposals": {"lowres_layout": "stretch"}})
    assert LLMSegConfig.from_dict(tiny_config().to_dict()) == tiny_config()


def test_a_saved_config_is_a_preset(tmp_path):
    path = tmp_path / "llmseg_config.json"
    saved = tiny_config()
    saved.selection.iop_threshold = 0.3
    saved.save(path)
    config = parse_command(benchmark.COMMAND, ["--preset", str(path), "--model.vlm.max_new_tokens", "9"]).config
    model = config.model_config()
    assert model.selection.iop_threshold == 0.3 and model.vlm.max_new_tokens == 9
    assert model.weights.llava_path == tiny_config().weights.llava_path


def test_field_comments_take_the_lines_above_and_beside():
    comments = field_comments(TrainConfig)
    assert comments["steps"] == "optimizer steps"
    assert comments["prefill_workers"].startswith("Worker processes that fill that memo before the first step")
    assert field_comments(generate.DatagenRun)["dry_run"].startswith("show selection counts and one prompt")
    assert field_comments(generate.DatagenRun)["limit"].startswith("total images processed")  # from DatagenConfig


HELP_IMPORTS = """
import runpy, sys
heavy = {}
for module in sys.argv[1:]:
    sys.argv = [module, "--help"]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        assert done.code == 0, (module, done.code)
    heavy[module] = sorted(m for m in ("torch", "transformers", "accelerate", "peft", "segment_anything") if m in sys.modules)
print(heavy)
"""


def test_help_imports_no_torch_in_a_real_process():
    modules = ["llmseg_model.train", "llmseg_model.benchmark", "llmseg_model.demo", "llmseg_model.convert_official",
               "llmseg_model.data.proposal_cache", "llmseg_model.datagen.generate", "llmseg_model.latency"]
    done = subprocess.run([sys.executable, "-c", HELP_IMPORTS, *modules], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heavy = eval(done.stdout.strip().splitlines()[-1])
    assert heavy == {module: [] for module in modules}
    assert "usage: python -m llmseg_model.train " in done.stdout


def test_bad_input_exit_code_in_a_real_process(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "llmseg_model.train", "--config", str(REPO / "config" / "train_tiny.yaml"),
         "--output-dir", str(out), "--model.vlm.answer_mode", "bogus"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "python -m llmseg_model.train: error: --model.vlm.answer_mode: expected one of 'given', 'verified', 'generate'; got bogus"
    ]
    assert not out.exists()
    script = Path(sys.executable).parent / "llmseg-train"
    if script.is_file():  # the console script names itself
        version = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
        assert version.stdout.strip() == f"llmseg-train {__version__}"


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("train_*.yaml")) + sorted((REPO / "config").glob("benchmark_*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_read_the_same_through_the_command_line(path):
    command, job = (train.COMMAND, TrainConfig) if path.name.startswith("train") else (benchmark.COMMAND, benchmark.BenchmarkConfig)
    parsed = parse_command(command, ["--config", str(path), "--print_config"]).config
    direct = job.from_yaml(path)
    assert parsed.model_config() == direct.model_config()
    assert {k: v for k, v in vars(parsed).items() if k != "model"} == {k: v for k, v in vars(direct).items() if k != "model"}


@pytest.mark.parametrize("name", ["datagen.yaml", "datagen_offline.yaml"])
def test_shipped_datagen_configs_read_the_same_through_the_command_line(name):
    from llmseg_model.datagen.config import DatagenConfig

    parsed = parse_command(generate.COMMAND, ["--config", str(REPO / "config" / name), "--print_config"]).config
    assert parsed.settings() == DatagenConfig.load(REPO / "config" / name) and parsed.dry_run is False
