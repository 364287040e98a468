"""A run directory remembers the settings its stages ran with: a changed key that a stage with results
depends on stops the job in one line (exit 2) unless the user keeps the old results or redoes the stage."""

import json

import pytest

from configs.demo import get_config
from pgen_jax import run_settings
from pgen_jax.errors import ConfigError
from test_sft import ROOT, run_main, sft_args


def test_a_stage_depends_on_its_sections_and_those_it_starts_from(tmp_path):
  cfg = get_config()
  cfg.workdir = str(tmp_path)
  sft_alone = run_settings.depends_on(cfg, "sft", ("prepare", "sft"))
  assert sft_alone["sft.lr"] == 3e-3 and sft_alone["data.history_len"] == 3 and sft_alone["seed"] == 0
  assert not any(k.startswith(("vq.", "grpo.", "eval.", "export.", "fetch.", "mesh.")) for k in sft_alone)
  # how often it logs, saves or evaluates changes nothing it has done
  assert not any(k.endswith(("log_every", "ckpt_every", ".keep", "eval_every")) for k in sft_alone)
  assert "data.workers" not in sft_alone and "sft.trainable" in sft_alone
  # sft starts from the vq stage's tokenizer when that stage runs (or ran)
  assert run_settings.depends_on(cfg, "sft", ("vq", "sft"))["vq.lr"] == 3e-3
  (tmp_path / "sft").mkdir()
  grpo = run_settings.depends_on(cfg, "grpo", ("grpo",))
  assert grpo["grpo.lr"] == 2e-4 and grpo["sft.lr"] == 3e-3 and "vq.lr" not in grpo
  # LoRA's settings change what sft and grpo train, not the vq stage's tokenizer
  assert grpo["model.lora.rank"] == 0 and sft_alone["model.lora.alpha"] == 32.0
  vq = run_settings.depends_on(cfg, "vq", ("vq",))
  assert vq["model.preset"] == "demo" and not any(k.startswith("model.lora.") for k in vq)


def last_line(run):
  assert "Traceback" not in run.stderr
  return run.stderr.strip().splitlines()[-1]


def test_a_changed_setting_of_a_finished_stage_is_one_line_unless_kept_or_redone(tmp_path):
  store, workdir = tmp_path / "shared", tmp_path / "run"
  args = sft_args(workdir, store, steps=2)
  first = run_main(ROOT, *args)
  assert first.returncode == 0, first.stderr[-3000:]
  recorded = json.loads((workdir / "sft" / "settings.json").read_text())
  assert recorded["sft.lr"] == 3e-3 and recorded["sft.num_steps"] == 2
  trained = (workdir / "sft" / "final").stat().st_mtime_ns

  changed = run_main(ROOT, *args, "--config.sft.lr=1e-2")
  assert changed.returncode == 2
  line = last_line(changed)
  assert "sft.lr: 0.003 -> 0.01" in line and "--redo=sft" in line and str(workdir) in line, line

  # keys that change nothing done pass: how often SFT logs, and a stage that has not run yet
  same = run_main(ROOT, *args, "--config.sft.log_every=1", "--config.grpo.lr=1e-3")
  assert same.returncode == 0, same.stderr[-3000:]
  assert "SFT already finished" in same.stderr

  kept = run_main(ROOT, *args, "--config.sft.lr=1e-2", "--keep_old_results")
  assert kept.returncode == 0, kept.stderr[-3000:]
  assert (workdir / "sft" / "final").stat().st_mtime_ns == trained
  assert json.loads((workdir / "sft" / "settings.json").read_text())["sft.lr"] == 3e-3

  redone = run_main(ROOT, *args, "--config.sft.lr=1e-2", "--redo=sft")
  assert redone.returncode == 0, redone.stderr[-3000:]
  assert "SFT already finished" not in redone.stderr
  assert (workdir / "sft" / "final").stat().st_mtime_ns != trained
  assert json.loads((workdir / "sft" / "settings.json").read_text())["sft.lr"] == 1e-2

  bad = run_main(ROOT, *args, "--redo=eval")
  assert bad.returncode == 2 and "--redo: ['eval'] are not training stages" in last_line(bad)


def test_a_key_this_version_renamed_is_not_a_change(tmp_path):
  """A workdir from before a key moved (grpo.clip -> reward_models.clip) goes on: the old key is not
  compared, the keys both versions have are."""
  cfg = get_config()
  cfg.workdir = str(tmp_path)
  (tmp_path / "grpo" / "final").mkdir(parents=True)
  recorded = run_settings.depends_on(cfg, "grpo", ("grpo",))
  assert recorded["reward_models.clip"] == "" and "grpo.clip" not in recorded
  old = {**{k: v for k, v in recorded.items() if not k.startswith("reward_models.")}, "grpo.clip": "clip/dir"}
  (tmp_path / "grpo" / "settings.json").write_text(json.dumps(old))
  run_settings.check(cfg, ("grpo",))
  (tmp_path / "grpo" / "settings.json").write_text(json.dumps({**old, "grpo.lr": 1.0}))
  with pytest.raises(ConfigError, match=r"grpo.lr: 1.0 -> 0.0002: grpo in .* ran with the old values"):
    run_settings.check(cfg, ("grpo",))
