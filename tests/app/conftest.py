import pytest


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Each test generates into a folder of its own."""
    settings.DATA_DIR = tmp_path / "data"
    settings.UPLOAD_DIR = settings.DATA_DIR / "uploads"
    return settings.DATA_DIR
