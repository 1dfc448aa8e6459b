"""Build dist/psrq.zip for spark-submit --py-files: the psrq package and, inside it as
psrq/conf, the default configuration (read with importlib.resources, so the jobs need no
path next to the source). Python's zipfile: no zip tool needed."""
import sys
import zipfile
from pathlib import Path

root = Path(__file__).resolve().parent.parent
out = root / "dist" / "psrq.zip"
out.parent.mkdir(exist_ok=True)
tmp = out.with_suffix(".zip.tmp")
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for p in sorted((root / "lib" / "psrq").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
            z.write(p, p.relative_to(root / "lib"))
    for p in sorted((root / "conf").rglob("*.yaml")):
        z.write(p, Path("psrq", "conf") / p.relative_to(root / "conf"))
tmp.replace(out)
print(f"{out.relative_to(root)}: pass it to spark-submit --py-files ({len(zipfile.ZipFile(out).namelist())} files)")
sys.exit(0)
