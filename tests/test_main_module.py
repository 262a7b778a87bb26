"""`python -m llsh_index` runs the command line, as the installed `llsh-index` script does."""
import subprocess
import sys


def test_python_m_llsh_index_is_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "llsh_index", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ") and "evaluate" in done.stdout and "merge" in done.stdout
    # an error ends with the CLI's one line and status 2, not a traceback
    done = subprocess.run([sys.executable, "-m", "llsh_index", "info", "--index", str(tmp_path / "none.llsh")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "none.llsh" in done.stderr
