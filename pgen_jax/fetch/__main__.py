"""python -m pgen_jax.fetch --config=configs/<name>.py [--config.key=value ...]

Downloads what the config's stages need and lack, then stops (the job's fetch stage alone), with the
job's one-line errors and exit codes.
"""

from absl import app

from pgen_jax import cli
from pgen_jax import main as job


def _main(argv):
  job.main(argv, only=("fetch",))  # what to fetch still follows the config's stages


if __name__ == "__main__":
  app.run(_main, flags_parser=cli.parse_flags)
