"""Django on a throw-away data folder and SQLite file, for the benchmarks that
need no other process (preview.py, dashboard.py). Removed again at exit."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def setup_django() -> Path:
    data = Path(tempfile.mkdtemp(prefix="flotilla-bench-"))
    if not os.environ.get("BENCH_KEEP"):
        atexit.register(shutil.rmtree, data, ignore_errors=True)
    os.environ["FLOTILLA_DATA_DIR"] = str(data)
    os.environ["DATABASE_URL"] = f"sqlite:///{data}/bench.sqlite3"
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings_test"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return data
