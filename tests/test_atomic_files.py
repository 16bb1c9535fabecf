"""Files written through a temporary file and a rename get the mode of any new file of the
process (0666 less the umask), not mkstemp's 0600: converted weights, last_checkpoint,
NormStudy results and visualize_sn's outputs must be readable where the umask allows."""

import os
import stat
import subprocess
import sys

import pytest

SCRIPT = """
import os, sys
os.umask(int(sys.argv[2], 8))
from sn_det.checkpoint.resume_files import write_text_atomically
from sn_det.tools.visualize_sn import write_all_or_nothing
folder = sys.argv[1]
write_text_atomically(os.path.join(folder, "last_checkpoint"), "model_final.pth")
write_all_or_nothing(os.path.join(folder, "sn"), {"importance.md": "x"})
with open(os.path.join(folder, "plain"), "w") as f:
    f.write("x")
"""


@pytest.mark.parametrize("umask", ["022", "027", "077"])
def test_atomic_outputs_get_the_mode_a_new_file_gets(tmp_path, umask):
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), umask], check=True)
    expected = 0o666 & ~int(umask, 8)
    for rel in ("plain", "last_checkpoint", os.path.join("sn", "importance.md")):
        mode = stat.S_IMODE(os.stat(tmp_path / rel).st_mode)
        assert mode == expected, (rel, oct(mode), oct(expected))
    assert sorted(os.listdir(tmp_path / "sn")) == ["importance.md"]  # no temporary left
