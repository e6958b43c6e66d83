"""A non-editable install (a built wheel) carries its configs and runs from any directory; cited files exist."""

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent
WEIGHTS = "ganlab/metrics/weights/mnist_classifier.pt"  # feature_net=mnist


def test_wheel_ships_configs_and_runs_outside_the_checkout(tmp_path):
    wheels, target, cwd = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = wheels.glob("ganlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "ganlab/configs/__init__.py" in names
    assert "ganlab/configs/train.yaml" in names and "ganlab/configs/experiment/gan_mnist.yaml" in names
    assert WEIGHTS in names and "ganlab/configs/image_metrics/mnist_gan.yaml" in names
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)

    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import ganlab; print(ganlab.__file__)"], cwd=cwd, env=env,
                           capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(target))
    proc = subprocess.run([str(target / "bin" / "ganlab"), "train", "+experiment=gan_mnist", "--cfg", "job"],
                          cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "_target_: ganlab.models.gan.GAN" in proc.stdout and "hidden:\n    - 256" in proc.stdout
    assert "feature_net: mnist" in proc.stdout  # the default MNIST GAN's image metrics
    net = subprocess.run([sys.executable, "-c", "from ganlab.feature_nets import load_feature_net; "
                          "print(load_feature_net('mnist').source)"], cwd=cwd, env=env, capture_output=True,
                         text=True)
    assert net.returncode == 0 and str(target / WEIGHTS) in net.stdout, net.stderr


def test_sdist_ships_the_feature_net_weights(tmp_path):
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", build, str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    (sdist,) = tmp_path.glob("ganlab-*.tar.gz")
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    assert WEIGHTS in names and "ganlab/configs/image_metrics/mnist.yaml" in names


# A path under benchmarks/ or docs/ as prose and comments cite it (not part of a URL or a longer path).
CITED_PATH = re.compile(r"(?<![\w./-])((?:benchmarks|docs)/[\w./-]*\w)")


def test_cited_benchmark_and_doc_files_exist():
    sources = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").glob("*.md"),
               *(ROOT / "scripts").iterdir(), *(p for p in (ROOT / "ganlab").rglob("*") if p.suffix in (".py", ".yaml"))]
    dangling = [f"{source.relative_to(ROOT)}:{n}: {cited}"
                for source in sources if source.is_file()
                for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1)
                for cited in CITED_PATH.findall(line) if not (ROOT / cited).exists()]
    assert not dangling, "cited but missing:\n" + "\n".join(dangling)
