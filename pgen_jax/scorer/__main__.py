"""python -m pgen_jax.scorer serve --nima=PATH --qwen=DIR [--host=127.0.0.1 --port=8765 --token=...]

Loads the backends given (at least one) and serves them until interrupted. The first line printed
is "listening on http://HOST:PORT".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pgen_jax.scorer.server import Scorer, make_server


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pgen_jax.scorer", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("serve")
  p.add_argument("--nima", help="NIMA Inception-ResNet-v2 weights (pyiqa's file)")
  p.add_argument("--qwen", help="Qwen2.5-VL directory (transformers layout)")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
  p.add_argument("--token", default=os.environ.get("PGEN_SCORER_TOKEN", ""), help="shared token (or PGEN_SCORER_TOKEN)")
  p.add_argument("--max_request_mb", type=float, default=64)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--judge_image_size", type=int, default=448)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  backends = {}
  if args.nima:
    from pgen_jax.scorer import nima  # lazy: each backend's torch models load only when asked for
    model = nima.load_nima(args.nima)
    backends["nima"] = lambda images, _profiles: nima.score(model, images, args.batch)
  if args.qwen:
    from pgen_jax.scorer.judge import ProfileJudge  # lazy: as nima
    judge = ProfileJudge(args.qwen, image_size=args.judge_image_size)
    backends["profile"] = lambda images, profiles: judge(images, profiles)
  if not backends:
    parser.error("give at least one of --nima and --qwen")
  server = make_server(Scorer(backends, args.batch), args.host, args.port, args.token,
                       int(args.max_request_mb * 2**20))
  host, port = server.server_address[:2]
  print(f"listening on http://{host}:{port}", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  return 0


if __name__ == "__main__":
  sys.exit(main())
