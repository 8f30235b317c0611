"""Peak host memory of loading a checkpoint, against its file size and its largest shard.

    python benchmarks/load_memory.py [--preset mini] [--shards 1 2 4 8]

Writes the preset's MXFP4 checkpoint re-split into 1, 2, 4, 8 shards, loads each in a fresh process
on the CPU and reports the peak anonymous memory minus (that before loading + the loaded model's own
bytes): the transient memory of loading, and separately the peak of file-backed (memory-mapped,
droppable) pages. If loading streams tensor by tensor, the transient stays small whatever the
checkpoint's size and the mapped pages track one shard, not the whole checkpoint.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file


def measure_in_subprocess(folder: Path) -> dict:
    # Peak anonymous memory is sampled by a thread: file-backed pages of the memory-mapped shards
    # also count in RSS but are page cache the kernel can drop, so they are reported apart.
    code = (
        "import json, threading, time, torch\n"
        "from oss_serve.model.loader import load_model\n"
        "def status(key): return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])\n"
        "peak = {'anon': 0, 'file': 0}; done = False\n"
        "def sample():\n"
        "    while not done:\n"
        "        peak['anon'] = max(peak['anon'], status('RssAnon'));"
        " peak['file'] = max(peak['file'], status('RssFile'))\n"
        "        time.sleep(0.001)\n"
        "before = status('RssAnon'); thread = threading.Thread(target=sample); thread.start()\n"
        f"loaded = load_model({str(folder)!r}, dtype='bfloat16', device='cpu')\n"
        "done = True; thread.join()\n"
        "model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())\n"
        "print(json.dumps({'before_kib': before, 'peak_anon_kib': peak['anon'], 'peak_file_kib': peak['file'],"
        " 'model_bytes': model_bytes}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reshard(source: Path, dest: Path, num_shards: int) -> int:
    """Copy `source` into `dest` with its tensors split by layer into `num_shards` files; returns the
    largest shard's size in bytes."""
    weight_map = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {}
    for file in sorted(set(weight_map.values())):
        with safe_open(str(source / file), framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    dest.mkdir(parents=True)
    for item in source.iterdir():
        if item.suffix == ".json" and item.name != "model.safetensors.index.json":
            shutil.copy(item, dest / item.name)

    def group_of(name: str) -> int:
        if name.startswith("model.layers."):
            layer = int(name.split(".")[2])
            num_layers = 1 + max(int(n.split(".")[2]) for n in tensors if n.startswith("model.layers."))
            return min(num_shards - 1, layer * num_shards // num_layers)
        return 0 if "embed" in name else num_shards - 1

    groups: dict[int, dict] = {}
    for name, tensor in tensors.items():
        groups.setdefault(group_of(name), {})[name] = tensor
    new_map, largest = {}, 0
    for index in range(num_shards):
        file = f"model-{index + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file(groups.get(index, {}), str(dest / file), metadata={"format": "pt"})
        largest = max(largest, (dest / file).stat().st_size)
        new_map |= {name: file for name in groups.get(index, {})}
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": new_map}))
    return largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    from oss_serve.testing.make_checkpoint import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        source = make_checkpoint(Path(tmp) / "source", preset=args.preset, mxfp4=True, seed=0)
        print(f"{'shards':>6} {'file MiB':>9} {'largest shard MiB':>18} {'model MiB':>10} {'transient anon MiB':>19} "
              f"{'peak mapped MiB':>16}")
        for num_shards in args.shards:
            folder = Path(tmp) / f"shards{num_shards}"
            largest = reshard(source, folder, num_shards)
            total = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
            m = measure_in_subprocess(folder)
            transient = (m["peak_anon_kib"] - m["before_kib"]) * 1024 - m["model_bytes"]
            print(f"{num_shards:>6} {total / 2**20:>9.1f} {largest / 2**20:>18.1f} {m['model_bytes'] / 2**20:>10.1f} "
                  f"{transient / 2**20:>19.1f} {m['peak_file_kib'] / 1024:>16.1f}")
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
