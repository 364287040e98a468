"""The recommenders' ranking quality on raw MovieLens-layout ratings, no images needed:

  python -m pgen_jax.recommenders --root=/path/ml-latest-small [--history_len=5 --future_len=3]

Windows and splits as the prepare stage makes them (pgen_jax.data.histories), every rated item usable;
prints and writes (--out) HR@K and NDCG@K of each recommender on the test windows' targets.
"""

from __future__ import annotations

import collections
import json

import numpy as np
from absl import app, flags

from pgen_jax.data import movielens
from pgen_jax.data.histories import WindowConfig, make_windows, sequences
from pgen_jax.fileio import write_json
from pgen_jax.recommenders.baselines import popularity
from pgen_jax.recommenders.build import NAMES, fit_all
from pgen_jax.recommenders.ranking import ranking_metrics, top_k

FLAGS = flags.DEFINE_string("root", None, "MovieLens directory (ratings + movies)", required=True), None
_HIST = flags.DEFINE_integer("history_len", 5, "history items per window")
_FUT = flags.DEFINE_integer("future_len", 3, "future items per window")
_EPOCHS = flags.DEFINE_integer("sasrec_epochs", 30, "SASRec epochs")
_OUT = flags.DEFINE_string("out", "", "write the figures here as JSON")


def evaluate(windows, users, test, num_items, names=NAMES, sasrec=None, k=10) -> dict:
  recs = fit_all(names, windows, users, num_items, sasrec)
  h, pop = _HIST.value, popularity(windows, users, num_items)
  out = {}
  for name, rec in recs.items():
    ranked = top_k(rec.scores(test[:, :h]), test[:, :h], k, pop)
    out[name] = ranking_metrics(ranked, test[:, h], ks=(1, k))
  return out


def main(_):
  catalog, inter, _ = movielens.read(FLAGS[0].value)
  cfg = WindowConfig(history_len=_HIST.value, future_len=_FUT.value)
  w = make_windows(sequences(inter, cfg, set(np.unique(inter.item).tolist()), collections.Counter()), cfg,
                   collections.Counter())
  ids = np.unique(np.concatenate([w.items[s].reshape(-1) for s in ("train", "test")]))
  index = lambda a: np.searchsorted(ids, a).astype(np.int32)
  res = evaluate(index(w.items["train"]), w.users["train"], index(w.items["test"]), len(ids),
                 sasrec={"epochs": _EPOCHS.value})
  res = {"windows": {"train": len(w.users["train"]), "test": len(w.users["test"])}, "items": len(ids), **res}
  print(json.dumps(res, indent=1))
  if _OUT.value:
    write_json(_OUT.value, res)


if __name__ == "__main__":
  app.run(main)
