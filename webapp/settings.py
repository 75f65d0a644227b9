"""Flotilla settings. Everything that differs between machines comes from the
environment through the strict helpers in webapp/env.py; see README.md and
.env.example for the variables."""

import os
import re
import sys
from datetime import timedelta

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured

from .env import BASE_DIR, data_dir, env_bool, env_choice, env_dir, env_dirs, env_int, env_list, env_str, env_url

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key-do-not-use-in-production" if DEBUG else None)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
# Behind a proxy that terminates HTTPS: e.g. https://flotilla.example.org
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
if env_bool("BEHIND_HTTPS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Where experiments are generated, uploads kept and the default SQLite file lives.
DATA_DIR = data_dir()
# Server folders users may attach files from (besides their own uploads).
FILE_ROOTS = env_dirs("FLOTILLA_FILE_ROOTS", [BASE_DIR / "examples"])
# Flotilla's data (the SQLite file with password hashes and sessions, uploads, member
# outputs) is for the server's account only: every process that loads these settings
# (web, worker, monitor, manage.py) creates files and folders with no rights for others.
os.umask(0o077)
DATA_DIR.mkdir(parents=True, exist_ok=True)
DATA_DIR.chmod(0o700)
UPLOAD_DIR = DATA_DIR / "uploads"
FILE_UPLOAD_PERMISSIONS = 0o600  # Django would chmod uploads to 0o644
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
MAX_UPLOAD_BYTES = env_int("FLOTILLA_MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1)

# Runs
MAX_MEMBERS_PER_RUN = env_int("FLOTILLA_MAX_MEMBERS_PER_RUN", 100_000, minimum=1)
CANCEL_GRACE_SECONDS = env_int("FLOTILLA_CANCEL_GRACE_SECONDS", 10, minimum=0)
# A pending run whose submission no worker has claimed this long after it was sent (a worker
# died holding the task, or the task queue was down) is sent again by the monitor.
SUBMIT_GRACE_SECONDS = env_int("FLOTILLA_SUBMIT_GRACE_SECONDS", 15, minimum=1)
# The largest file (stdout, stderr or any other) a member may write: past it, it is stopped.
MAX_OUTPUT_BYTES = env_int("FLOTILLA_MAX_OUTPUT_BYTES", 4 * 1024**3, minimum=1024)

# Who members run as. "server": the server's own account (right only when every user
# may act as the server, e.g. a personal deployment). "user": the Unix account mapped
# to each Flotilla user in the admin, through `sudo -n -u <account>` (README: security).
RUN_AS = env_choice("FLOTILLA_RUN_AS", "server", ("server", "user"))
# user mode: each account's member folders ({home}, {account} are filled in), mode 0700.
ACCOUNT_ROOT = env_str("FLOTILLA_ACCOUNT_ROOT", "{home}/flotilla")
if set(re.findall(r"{([^}]*)}", ACCOUNT_ROOT)) - {"home", "account"} or not ACCOUNT_ROOT.startswith(("/", "{home}")):
    raise ImproperlyConfigured(f"FLOTILLA_ACCOUNT_ROOT must be an absolute path using only {{home}} and {{account}}; got {ACCOUNT_ROOT!r}")
# The member-side agent (launchers/agent.py under AGENT_DIR) and the Python it runs on:
# both readable and executable by every mapped account (it needs the standard library only).
AGENT_DIR = env_dir("FLOTILLA_AGENT_DIR", BASE_DIR)
AGENT_PYTHON = env_str("FLOTILLA_AGENT_PYTHON", sys.executable)
MIN_ACCOUNT_UID = env_int("FLOTILLA_MIN_ACCOUNT_UID", 1000, minimum=1)
EVENT_STREAM = env_str("FLOTILLA_EVENT_STREAM", "flotilla:events")

REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))

_default_database = f"sqlite:///{DATA_DIR / 'flotilla.sqlite3'}"
_database_url = env_str("DATABASE_URL", _default_database)
try:
    # No persistent connections: under ASGI each request may run in another thread.
    _database = dj_database_url.parse(_database_url, conn_max_age=0)
except Exception as error:  # dj-database-url raises several types for bad URLs
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {error}") from None
if _database["ENGINE"] == "django.db.backends.sqlite3":
    _database["CONN_MAX_AGE"] = 0
    # A file, not memory, so that a test ASGI server in another process sees the test data.
    _database["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
    # Several processes write (web, worker, monitor): WAL lets readers and a writer overlap,
    # and IMMEDIATE transactions take the write lock up front instead of failing to upgrade.
    _database.setdefault("OPTIONS", {}).update(
        timeout=20,
        transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    )
DATABASES = {"default": _database}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "axes",  # login throttling
    "csp",
    "ensembles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lock-out into the login page, refused (429)
]

ROOT_URLCONF = "webapp.urls"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "ensembles.admin.run_as_warning",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
# Login throttling (django-axes, state in the database: shared by every web process): after
# AXES_FAILURE_LIMIT failures for one username from one address, that pair is refused for the
# cool-off; failures older than the cool-off are forgotten, a successful login resets the count.
AXES_FAILURE_LIMIT = env_int("FLOTILLA_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("FLOTILLA_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False  # no INFO line per log-in (and per force_login in the tests)
AXES_LOCKOUT_CALLABLE = "ensembles.views.login_locked_out"
LOGIN_REDIRECT_URL = "ensembles:experiment_list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = True  # serve straight from static/, no collectstatic step needed
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATA_UPLOAD_MAX_NUMBER_FIELDS = 5000

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
X_FRAME_OPTIONS = "DENY"
# No inline script anywhere (static/js/app.js holds the glue); styles may be inline because
# Plotly sets style attributes and adds <style> rules. 'self' covers this origin's websockets.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # No socket_timeout: redis-py 8 defaults to 5 s and then sends through asyncio.wait_for,
        # which on Python 3.11 can swallow a cancellation; a consumer's receive cancelled at that
        # moment waits out its BZPOPMIN and dies with a TimeoutError, killing its live socket
        # (tests/integration/test_channel_layer.py).
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            # Instances sharing a Redis keep their groups apart (tests use one of their own).
            "prefix": env_str("FLOTILLA_CHANNEL_PREFIX", "asgi"),
        },
    }
}

CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = env_str("FLOTILLA_TASK_QUEUE", "flotilla")
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ACKS_LATE = True  # a task may run twice: every task claims its work first
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = 3600
# Nothing reads task results (bar the health check's ping, which asks for its own): with
# results on, every send first subscribes to the result store, and a Redis that is down holds
# it for ~19 s of reconnects (20 retries) before it fails.
CELERY_TASK_IGNORE_RESULT = True
# A send to a broker that is down or hangs fails within ~2 s (one retry, on a fresh connection,
# covers a connection that went stale when Redis restarted); the callers keep their work and
# the monitor sends again (services._enqueue). Without socket timeouts a hung Redis holds a
# send for ever.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 1}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
