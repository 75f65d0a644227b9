"""Server time to render the builder's live-preview fragment.

Cases: a 10^15-member all_perm space (3 numeric parameters of 10^5 values, so
the scatter plot is built too) and a random sample of n_models=10^4 from it.
Each request goes through Django's full stack (middleware, form parsing,
expansion, template) with the test client; a throw-away SQLite database is used.
Prints name=value lines; the last is the headline: the worse case's p50.
"""

import os
import statistics
import time

from _django import setup_django  # noqa: E402

setup_django()

from django.contrib.auth import get_user_model  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402

from ensembles import services  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "60"))
PARAMS = [("alpha", "linspace(0, 1, 100000)"), ("nx", "range(0, 100000)"), ("dt", "logspace(-6, -1, 100000)")]


def form(**overrides):
    data = {
        "name": "sweep", "perm_strategy": "all_perm", "n_models": "", "seed": "7", "replicas": "1",
        "exe": "/usr/bin/python3", "exe_args": "heat.py --steps 100", "tag": ";", "key_prefixing": "on",
        "params-TOTAL_FORMS": str(len(PARAMS)), "params-INITIAL_FORMS": "0",
        "params-MIN_NUM_FORMS": "0", "params-MAX_NUM_FORMS": "1000",
    }
    for index, (name, values) in enumerate(PARAMS):
        data[f"params-{index}-name"] = name
        data[f"params-{index}-values"] = values
        data[f"params-{index}-as_arg"] = "on"
    data.update(overrides)
    return data


def measure(client, url, data):
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        response = client.post(url, data)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200 and b"data-count" in response.content, response.content[:500]
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def main():
    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    experiment = services.experiment_create(owner=user, name="bench")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    url = reverse("ensembles:ensemble_preview_new", args=[experiment.pk])
    client.post(url, form())  # warm up templates and imports

    all_perm_p50, all_perm_p95 = measure(client, url, form())
    random_p50, random_p95 = measure(client, url, form(perm_strategy="random", n_models="10000"))
    last_page_p50, _ = measure(client, url, form(preview_page=str(10**15 // 20)))
    print(f"rounds={ROUNDS}")
    print("space_members=1000000000000000")
    print(f"all_perm_p50_ms={all_perm_p50:.2f}")
    print(f"all_perm_p95_ms={all_perm_p95:.2f}")
    print(f"all_perm_last_page_p50_ms={last_page_p50:.2f}")
    print(f"random_1e4_p50_ms={random_p50:.2f}")
    print(f"random_1e4_p95_ms={random_p95:.2f}")
    print(f"preview_p50_ms={max(all_perm_p50, random_p50):.2f}")


if __name__ == "__main__":
    main()
