"""Without the data-preparation extras, prepare_ixi.py says what to install instead of a traceback."""
from conftest import ROOT, run_script


def test_missing_extras_give_an_install_hint(tmp_path):
    # sys.modules[name] = None makes `import name` fail, as on a machine without requirements-data.txt.
    code = ("import sys, runpy; sys.modules['nibabel'] = sys.modules['SimpleITK'] = None; sys.argv = ['prepare_ixi.py', '--help']; "
            f"runpy.run_path({str(ROOT / 'data' / 'prepare_ixi.py')!r}, run_name='__main__')")
    r = run_script(["-c", code], cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "nibabel" in r.stderr and "requirements-data.txt" in r.stderr and "错误" in r.stderr
