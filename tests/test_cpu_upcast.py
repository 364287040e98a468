"""bench.cpu_upcast against hand-counted bytes: XLA's CPU backend copies a bf16 weight to f32 for its dot
(4 bytes per element, inside the temporaries), and copies nothing for an f32 one."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys
from pgen_jax.bench import cpu_upcast
dump = cpu_upcast.enable_dump()
import jax, jax.numpy as jnp
out = {}
for dtype in ("bfloat16", "float32"):
  w = jax.ShapeDtypeStruct((2048, 1024), jnp.dtype(dtype))
  x = jax.ShapeDtypeStruct((4, 2048), jnp.dtype(dtype))
  # a loop reading the same weight, as a sampler's decode steps do: the copy is hoisted and made once
  f = lambda w, x: jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ w) @ w.T, x)
  jax.jit(f).lower(w, x).compile()
  out[dtype] = cpu_upcast.newest(dump)
print(json.dumps(out))
"""


def test_counts_the_f32_copy_of_a_bf16_weight_and_nothing_for_f32():
  run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  assert run.returncode == 0, run.stderr[-2000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  weight_f32 = 2048 * 1024 * 4
  assert got["float32"] == 0
  # the weight in f32 once, or twice if XLA also keeps its transpose's copy: never a fraction or a third
  assert got["bfloat16"] in (weight_f32, 2 * weight_f32), got


def test_overlapping_values_count_once():
  from pgen_jax.bench.cpu_upcast import upcast_bytes
  text = ("allocation 0: size 64, parameter 0, shape |f32[16]| at ShapeIndex {}:\n"
          " value: <1 p @0> (size=64,offset=0): f32[16]{0}\n"
          "allocation 1: size 300, preallocated-temp:\n"
          " value: <2 convert.1 @0> (size=100,offset=0): f32[25]{0}\n"
          " value: <3 convert_fusion.2 @0> (size=100,offset=50): f32[25]{0}\n"
          " value: <4 add.3 @0> (size=100,offset=200): f32[25]{0}\n"
          " value: <5 convert.4 @0> (size=40,offset=200): bf16[20]{0}\n")
  assert upcast_bytes(text, min_bytes=1) == 150  # [0, 150): two converts overlapping; add and bf16 not counted
  assert upcast_bytes(text, min_bytes=101) == 0
  assert upcast_bytes(text, {"convert.1"}, min_bytes=1) == 100  # the copies of arguments alone


def test_copied_arguments_are_f32_values_made_from_bf16_arguments_alone():
  from pgen_jax.bench.cpu_upcast import copied_arguments
  hlo = ("HloModule m\n\n%fused (p: bf16[4]) -> f32[4] {\n}\n\nENTRY %main (w: bf16[4], m: f32[4], x: bf16[4]) -> f32[4] {\n"
         "  %w = bf16[4]{0} parameter(0)\n  %m = f32[4]{0} parameter(1)\n  %x = bf16[4]{0} parameter(2)\n"
         "  %convert_fusion.1 = f32[4]{0} fusion(%w), kind=kLoop, calls=%fused\n"
         "  %wrapped_convert.2 = f32[4]{0} fusion(%w, %x), kind=kLoop, calls=%fused\n"
         "  %convert.3 = f32[4]{0} convert(%x)\n"
         "  %round.4 = f32[4]{0} fusion(%m), kind=kLoop, calls=%fused\n"
         "  %add.5 = bf16[4]{0} add(%w, %x)\n  %convert.6 = f32[4]{0} convert(%add.5)\n"
         "  ROOT %t = f32[4]{0} add(%convert.3, %convert.6)\n}\n")
  assert copied_arguments(hlo) == {"convert_fusion.1", "wrapped_convert.2", "convert.3"}
