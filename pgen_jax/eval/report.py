"""The comparison's outputs from the per-method values: results.json, results.md (rows = methods,
columns = metrics, best in bold) and report.html (one self-contained page: the tables, a section per
user with every method's images and their metric values, and the training curves when present)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
from absl import logging

from pgen_jax.eval import stats
from pgen_jax.viz import png_bytes
from pgen_jax.eval.metrics import LOWER_IS_BETTER
from pgen_jax.fileio import write_bytes

MODES = ("mean", "best")  # single-sample mean over the N images; best of the N


def summarise(values: dict[str, dict[str, np.ndarray]], kinds: dict[str, str], resamples: int = 1000,
              seed: int = 0) -> dict:
  """values {method: {metric: (W, N)}} -> per method and metric, (mean, low, high) for each mode; the best
  recommender per metric and mode; each generator's paired difference to it."""
  names = list(values)
  metric_names = [m for m in values[names[0]] if all(m in values[n] for n in names)]
  windows = len(next(iter(values[names[0]].values())))
  idx = stats.bootstrap_indices(windows, resamples, seed)
  per_win = {n: {m: {mode: stats.per_window(values[n][m], mode == "best", m not in LOWER_IS_BETTER)
                     for mode in MODES} for m in metric_names} for n in names}
  out = {"methods": {n: {m: {mode: stats.interval(per_win[n][m][mode], idx) for mode in MODES}
                         for m in metric_names} for n in names},
         "best_recommender": {}, "differences": {}}
  recs = [n for n in names if kinds[n] == "recommender"]
  for m in metric_names:
    sign = -1 if m in LOWER_IS_BETTER else 1
    for mode in MODES:
      if not recs:
        continue
      best = max(recs, key=lambda n: sign * out["methods"][n][m][mode][0])
      out["best_recommender"].setdefault(m, {})[mode] = best
      for g in (n for n in names if kinds[n] == "generator"):
        out["differences"].setdefault(g, {}).setdefault(m, {})[mode] = stats.paired_difference(
            per_win[g][m][mode], per_win[best][m][mode], idx)
  # every pair of generators, the later in the configured order minus the earlier (grpo-sft, ...), single-sample
  # mean: what one generator adds over another on the very same windows
  gens = [n for n in names if kinds[n] == "generator"]
  out["paired"] = {f"{a}-{b}": {m: stats.paired_difference(per_win[a][m]["mean"], per_win[b][m]["mean"], idx)
                                for m in metric_names}
                   for j, a in enumerate(gens) for b in gens[:j]}
  return out


def best_method(table: dict, metric: str, mode: str) -> str:
  sign = -1 if metric in LOWER_IS_BETTER else 1
  return max(table, key=lambda n: sign * table[n][metric][mode][0])


def markdown(res: dict) -> str:
  methods = res["methods"]
  names = list(methods)
  metrics = list(methods[names[0]]["metrics"])
  lines = [f"# Generated vs retrieved: {res['windows']} test windows, N = {res['samples']} images each", ""]
  table = {n: methods[n]["metrics"] for n in names}
  for mode, title in (("mean", "Single-sample mean"), ("best", f"Best of {res['samples']}")):
    lines += [f"## {title} (95% bootstrap interval over windows)", "",
              "| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for n in names:
      cells = []
      for m in metrics:
        v, lo, hi = table[n][m][mode]
        cell = f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
        cells.append(f"**{cell}**" if best_method(table, m, mode) == n else cell)
      lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
  keys = sorted({k for n in names for k in methods[n].get("ranking", {})})
  lines += ["## Ranking of the target (recommenders: their list; generators: generate-then-ground)", "",
            "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for n in names:
    r = methods[n].get("ranking", {})
    best = {k: max(names, key=lambda x: methods[x].get("ranking", {}).get(k, -1)) for k in keys}
    lines.append(f"| {n} | " + " | ".join(f"**{r[k]:.4f}**" if best[k] == n else f"{r[k]:.4f}" for k in keys) + " |")
  if res["differences"]:
    lines += ["", "## Generators minus the best recommender (per metric; paired over windows)", "",
              "| generator | mode | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for g, d in res["differences"].items():
      for mode in MODES:
        lines.append(f"| {g} | {mode} | " + " | ".join(
            f"{d[m][mode][0]:+.3f} [{d[m][mode][1]:+.3f}, {d[m][mode][2]:+.3f}] vs {res['best_recommender'][m][mode]}"
            for m in metrics) + " |")
  if res.get("paired"):
    lines += ["", "## Generators paired (later minus earlier, single-sample mean; 95% bootstrap interval over windows)",
              "", "| pair | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for pair, d in res["paired"].items():
      lines.append(f"| {pair} | " + " | ".join(f"{d[m][0]:+.3f} [{d[m][1]:+.3f}, {d[m][2]:+.3f}]" for m in metrics) + " |")
  return "\n".join(lines) + "\n"


def write_results(cfg, out: Path, methods: list[str], comparison, extra: dict) -> dict:
  values, info = {}, {}
  for m in methods:
    d = out / "methods" / m
    with np.load(d / "values.npz") as z:
      values[m] = {k: z[k] for k in z.files}
    info[m] = json.loads((d / "method.json").read_text())
  s = summarise(values, {m: info[m]["kind"] for m in methods}, cfg.eval.bootstrap, cfg.eval.seed)
  res = {"windows": int(len(comparison.windows.users)), "samples": int(cfg.eval.samples),
         "metric_models": {"clip": cfg.eval.clip or cfg.reward_models.clip, "dino": cfg.eval.dino or cfg.reward_models.dino},
         "methods": {m: {"kind": info[m]["kind"], "ranking": info[m]["ranking"],
                         **({"source": info[m]["source"]} if "source" in info[m] else {}),
                         "metrics": {k: {mode: list(v[mode]) for mode in MODES} for k, v in s["methods"][m].items()}}
                     for m in methods},
         "best_recommender": s["best_recommender"],
         "differences": {g: {k: {mode: list(v) for mode, v in d.items()} for k, d in dd.items()}
                         for g, dd in s["differences"].items()},
         "paired": {pair: {k: list(v) for k, v in d.items()} for pair, d in s["paired"].items()},
         **extra}
  write_bytes(out / "results.json", json.dumps(res, indent=2).encode())  # rows in the configured order
  md = markdown(res)
  write_bytes(out / "results.md", md.encode())
  write_bytes(out / "report.html", page(cfg, out, res, values, info, comparison).encode())
  logging.info("eval results:\n%s", md)
  return res


CAPTION = ("cis_target", "dis_target", "cis_history", "lpips_target", "ssim_target", "genre_hit",
           "pixel_genre_hit")  # the rest on hover


def _img(data: bytes, caption: str = "", size: int = 96, title: str = "") -> str:
  return (f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}" width="{size}" '
          f'height="{size}" title="{html.escape(title or caption)}"><figcaption>{html.escape(caption)}</figcaption>'
          '</figure>')


def _curves(workdir: Path) -> str:
  """SVG plots of the SFT loss and GRPO reward scalars from the runs' TensorBoard events, when present."""
  try:
    # lazy: tensorboard and TensorFlow (optional, pgen_jax[data]) only for the curves
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorflow import make_ndarray
  except ImportError:
    return ""
  parts = []
  for stage, want in (("sft", ("loss",)), ("grpo", ("reward",))):
    tb = workdir / stage / "tb"
    if not tb.exists():
      continue
    acc = EventAccumulator(str(tb), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    series = {}
    for tag in acc.Tags().get("tensors", []):
      if any(w in tag for w in want):
        ev = acc.Tensors(tag)
        series[tag] = [(e.step, float(np.asarray(make_ndarray(e.tensor_proto)))) for e in ev]
    for tag in acc.Tags().get("scalars", []):
      if any(w in tag for w in want):
        series[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    for tag, pts in sorted(series.items()):
      if len(pts) > 1:
        parts.append(_svg(f"{stage}: {tag}", pts))
  return "<h2>Training curves</h2>" + "".join(parts) if parts else ""


def _svg(title: str, pts) -> str:
  x, y = np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)
  w, h = 360, 160
  sx = (x - x.min()) / max(np.ptp(x), 1e-12) * (w - 20) + 10
  sy = h - 10 - (y - y.min()) / max(np.ptp(y), 1e-12) * (h - 30)
  path = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(sx, sy))
  return (f'<figure class="curve"><svg width="{w}" height="{h}"><polyline fill="none" stroke="#1f77b4" '
          f'points="{path}"/><text x="10" y="14" font-size="11">{html.escape(title)}: {y[0]:.4g} -> {y[-1]:.4g} '
          f'(steps {int(x[0])}-{int(x[-1])})</text></svg></figure>')


def _table_html(res: dict) -> str:
  methods = res["methods"]
  names = list(methods)
  metrics = list(methods[names[0]]["metrics"])
  table = {n: methods[n]["metrics"] for n in names}
  keys = sorted({k for n in names for k in methods[n].get("ranking", {})})
  parts = []
  for mode, title in (("mean", "single-sample mean"), ("best", f"best of {res['samples']}")):
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    parts.append(f'<h2>Metrics, {title}</h2><table class="results" data-mode="{mode}"><thead><tr><th>method</th>'
                 f"<th>kind</th>{head}</tr></thead><tbody>")
    for n in names:
      cells = []
      for m in metrics:
        v, lo, hi = table[n][m][mode]
        text = f"{v:.3f}<br><small>[{lo:.3f}, {hi:.3f}]</small>"
        cells.append(f"<td><b>{text}</b></td>" if best_method(table, m, mode) == n else f"<td>{text}</td>")
      parts.append(f'<tr class="method"><td>{html.escape(n)}</td><td>{methods[n]["kind"]}</td>{"".join(cells)}</tr>')
    parts.append("</tbody></table>")
  parts.append("<h2>Ranking of the target</h2><table class=\"ranking\"><tr><th>method</th>"
               + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
  for n in names:
    r = methods[n].get("ranking", {})
    parts.append(f"<tr><td>{html.escape(n)}</td>" + "".join(f"<td>{r.get(k, float('nan')):.4f}</td>" for k in keys)
                 + "</tr>")
  parts.append("</table>")
  if res.get("paired"):
    parts.append("<h2>Generators paired: later minus earlier, single-sample mean, 95% interval (an interval "
                 "above 0 is a gain)</h2><table class=\"paired\"><tr><th>pair</th>"
                 + "".join(f"<th>{html.escape(m)}</th>" for m in metrics) + "</tr>")
    for pair, d in res["paired"].items():
      cells = "".join(f'<td class="{"up" if d[m][1] > 0 else "down" if d[m][2] < 0 else ""}">{d[m][0]:+.3f}<br>'
                      f"<small>[{d[m][1]:+.3f}, {d[m][2]:+.3f}]</small></td>" for m in metrics)
      parts.append(f"<tr><td>{html.escape(pair)}</td>{cells}</tr>")
    parts.append("</table>")
  return "".join(parts)


def page(cfg, out: Path, res: dict, values: dict, info: dict, comparison) -> str:
  """report.html: images inlined as PNG data, so the page is one file."""
  w = comparison.windows
  sections = []
  for i in range(min(cfg.eval.report_users, len(w.users))):
    hist = comparison.catalog.images(w.history[i])
    strip = "".join(_img(png_bytes(x), f"history {j + 1}") for j, x in enumerate(hist))
    catalog = comparison.catalog
    target = _img(png_bytes(catalog.images(w.target[i:i + 1])[0]), "target: " + catalog.texts(w.target[i:i + 1])[0])
    rows = []
    for m, v in values.items():
      imgs = []
      for k in range(res["samples"]):
        f = out / "methods" / m / "images" / f"{i:05d}_s{k}.png"
        full = ", ".join(f"{name} {v[name][i, k]:.3f}" for name in v)
        cap = " ".join(f"{name.replace('_target', '')} {v[name][i, k]:.2f}" for name in v if name in CAPTION)
        imgs.append(_img(f.read_bytes(), cap, title=full))
      rows.append(f'<div class="row"><span class="label">{html.escape(m)}</span>{"".join(imgs)}</div>')
    sections.append(f'<section class="user"><h3>User {int(w.users[i])}</h3><div class="row"><span class="label">'
                    f'history</span>{strip}<span class="label">target</span>{target}</div>{"".join(rows)}</section>')
  style = ("body{font-family:sans-serif;margin:20px} table{border-collapse:collapse;font-size:12px} "
           "td,th{border:1px solid #ccc;padding:3px} figure{display:inline-block;margin:2px;width:100px;"
           "vertical-align:top} figcaption{font-size:9px;word-break:break-word} .label{display:inline-block;"
           "width:80px;font-weight:bold;vertical-align:top} .row{margin:4px 0} td.up{background:#e3f4e3} "
           "td.down{background:#f8e3e3}")
  return (f"<!doctype html><html><head><meta charset='utf-8'><title>pgen_jax comparison</title><style>{style}"
          f"</style></head><body><h1>Generated vs retrieved</h1><p>{res['windows']} test windows, "
          f"{res['samples']} images per window per method; metric models: "
          f"{html.escape(json.dumps(res['metric_models']))}."
          f"</p>{_table_html(res)}<h2>Users</h2>{''.join(sections)}{_curves(Path(cfg.workdir))}</body></html>")
