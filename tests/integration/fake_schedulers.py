"""Fake PBS (qsub, qstat, qselect, qdel) and LSF (bsub, bjobs, bkill) programs for the
scheduler launchers' contract test (test_scheduler_fakes.py). Standard library only: the
test writes one small executable per program into a bin folder, which calls ``main``.

They keep their jobs in ``$FAKE_SCHEDULER_DIR/state.json`` (under a lock), log every
call to ``calls.log``, read the job script from stdin and its #PBS / #BSUB lines (the
command line wins), and really run it with bash in the background, in a session of its
own, so that qdel / bkill can signal every process of the job. What they print, and
where, follows the documented formats: ``qsub`` prints ``<seq>.<server>``; ``qstat -f -F
json`` a "Jobs" object, ``qstat: Unknown Job Id <id>`` on stderr and exit 153 for an id it
does not know; ``bsub`` prints ``Job <n> is submitted to queue <q>.``; ``bjobs -json``
"RECORDS", with an ERROR record and exit 255 for an unknown id; qdel sends SIGTERM,
bkill SIGINT."""

from __future__ import annotations

import contextlib
import fcntl
import getopt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

SERVER = "fakepbs"
QSUB_OPTIONS = "a:A:c:C:e:fhIj:J:k:l:m:M:N:o:p:q:r:R:S:u:v:VW:XzP:"
BSUB_FLAGS = {"H", "x", "N", "B", "r", "rn", "K", "I"}
BJOBS_FLAGS = {"a", "json", "w", "l", "noheader", "d", "r", "p", "s"}
FINISHED = {"F", "X", "DONE", "EXIT"}


def state_dir() -> Path:
    return Path(os.environ["FAKE_SCHEDULER_DIR"])


@contextlib.contextmanager
def jobs_state():
    """The state, locked; written back when the block ends."""
    folder = state_dir()
    with open(folder / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = folder / "state.json"
        state = json.loads(path.read_text()) if path.exists() else {"next_id": 100, "jobs": {}}
        yield state
        temporary = folder / "state.json.tmp"
        temporary.write_text(json.dumps(state))
        temporary.replace(path)


def ctime(stamp: float | None) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(stamp)) if stamp else ""


def lsf_time(stamp: float | None) -> str:
    return time.strftime("%b %d %H:%M", time.localtime(stamp)) if stamp else ""


def directive_args(script: str, prefix: str) -> list[str]:
    """The arguments of the directive lines before the first command (shell-like words)."""
    args: list[str] = []
    for line in script.splitlines()[1:]:
        if line.startswith(prefix + " "):
            args += shlex.split(line[len(prefix) + 1 :], comments=True)
        elif line.strip() and not line.startswith("#"):
            break
    return args


def fail(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code


def start_runner(job_id: str) -> None:
    subprocess.Popen([sys.executable, "-IS", __file__, "--run", job_id], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def new_job(store: dict, scheduler: str, script: str, **fields) -> dict:
    number = store["next_id"]
    store["next_id"] += 1
    job_id = f"{number}.{SERVER}" if scheduler == "pbs" else str(number)
    script_path = state_dir() / f"job-{number}.sh"
    script_path.write_text(script)
    job = {"id": job_id, "scheduler": scheduler, "script": str(script_path), "submitted": time.time(),
           "path": os.environ.get("PATH", os.defpath), "home": os.environ.get("HOME", "/"), "cwd": os.getcwd(),
           "start": None, "end": None, "exit": None, "pgid": None, "killed": False, **fields}
    store["jobs"][job_id] = job
    return job


# --- PBS ----------------------------------------------------------------------------------


def qsub(args: list[str]) -> int:
    try:
        given, rest = getopt.getopt(args, QSUB_OPTIONS)
    except getopt.GetoptError as error:
        return fail(f"qsub: {error}\nusage: qsub [-a date_time] ... [script | -- executable]", 2)
    if rest:
        return fail("qsub: this fake reads the script from stdin only", 2)
    script = sys.stdin.read()
    try:
        from_script, _ = getopt.getopt(directive_args(script, "#PBS"), QSUB_OPTIONS)
    except getopt.GetoptError as error:
        return fail(f"qsub: directive error: {error}", 2)
    options: dict[str, list[str]] = {}
    for source in (from_script, given):  # the command line wins over #PBS lines
        letters = {flag for flag, _ in source}
        for flag in letters:
            options[flag] = []
        for flag, value in source:
            options[flag].append(value)
    name = (options.get("-N") or ["STDIN"])[-1]
    if not name[:1].isalpha() or not all(char.isalnum() or char in "-_+" for char in name):
        return fail("qsub: illegal -N value", 2)
    variables = {}
    for item in ",".join(options.get("-v", [])).split(","):
        if item:
            variable, _, value = item.partition("=")
            variables[variable] = value
    resources = {}
    for value in options.get("-l", []):
        for item in value.split(","):
            resource, _, amount = item.partition("=")
            resources[resource] = amount
    held = "-h" in options
    with jobs_state() as state:
        job = new_job(state, "pbs", script, name=name, output=(options.get("-o") or [os.devnull])[-1],
                      error=(options.get("-e") or [os.devnull])[-1],
                      shell=(options.get("-S") or ["/bin/bash"])[-1], queue=(options.get("-q") or ["workq"])[-1],
                      account=(options.get("-A") or [None])[-1], resources=resources, variables=variables,
                      state="H" if held else "Q", comment="Job held by user" if held else "")
    print(job["id"])
    if not held:
        start_runner(job["id"])
    return 0


def qstat_record(job: dict) -> dict:
    record = {
        "Job_Name": job["name"], "Job_Owner": f"{os.environ.get('USER', 'user')}@fakehost", "job_state": job["state"],
        "queue": job["queue"], "server": SERVER, "ctime": ctime(job["submitted"]), "comment": job["comment"],
        "Output_Path": f"fakehost:{job['output']}", "Error_Path": f"fakehost:{job['error']}",
        "Resource_List": job["resources"], "Shell_Path_List": job["shell"],
        "Variable_List": {"PBS_O_HOME": job["home"], "PBS_O_WORKDIR": job["cwd"], **job["variables"]},
    }
    if job["account"]:
        record["Account_Name"] = job["account"]
    if job["start"]:
        record["stime"] = ctime(job["start"])
    if job["end"]:
        record["obittime"] = ctime(job["end"])
    if job["exit"] is not None:
        record["Exit_status"] = job["exit"]
    return record


def qstat(args: list[str]) -> int:
    given, ids = getopt.getopt(args, "xfF:")
    flags = dict(given)
    if "-f" not in flags or flags.get("-F") != "json":
        return fail("qstat: this fake prints -f -F json only", 2)
    with jobs_state() as state:
        jobs = state["jobs"]
    found, code = {}, 0
    for job_id in ids:
        job = jobs.get(job_id)
        if job is None:
            print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
            code = 153
        elif job["state"] in FINISHED and "-x" not in flags:
            print(f"qstat: {job_id} Job has finished, use -x or -H to obtain historical job information",
                  file=sys.stderr)
            code = 35
        else:
            found[job_id] = qstat_record(job)
    report = {"timestamp": int(time.time()), "pbs_version": "2022.1.0", "pbs_server": SERVER}
    if found:
        report["Jobs"] = found
    print(json.dumps(report, indent=4))
    return code


def qselect(args: list[str]) -> int:
    flags = dict(getopt.getopt(args, "xN:")[0])
    with jobs_state() as state:
        for job_id, job in state["jobs"].items():
            if job["name"] == flags.get("-N") and ("-x" in flags or job["state"] not in FINISHED):
                print(job_id)
    return 0


def qdel(ids: list[str]) -> int:
    code = 0
    with jobs_state() as state:
        for job_id in ids:
            job = state["jobs"].get(job_id)
            if job is None:
                print(f"qdel: Unknown Job Id {job_id}", file=sys.stderr)
                code = 153
            elif job["state"] in FINISHED:
                print(f"qdel: Job has finished {job_id}", file=sys.stderr)
                code = 35
            elif job["state"] in ("Q", "H"):
                job.update(state="F", end=time.time(), comment="Job deleted")
            else:
                job["killed"] = True
                signal_job(job, signal.SIGTERM)
    return code


# --- LSF ----------------------------------------------------------------------------------


def lsf_options(args: list[str], flags: set[str] = BSUB_FLAGS) -> tuple[dict[str, str | None], list[str]]:
    """LSF's options: one dash, names of any length, a value unless the option is a flag."""
    options: dict[str, str | None] = {}
    while args and args[0].startswith("-"):
        flag = args.pop(0)[1:]
        options[flag] = None if flag in flags else args.pop(0)
    return options, args


def valid_runlimit(text: str) -> bool:
    hours, _, minutes = text.rpartition(":")
    return minutes.isdigit() and (hours == "" or hours.isdigit())


def bsub(args: list[str]) -> int:
    given, rest = lsf_options(list(args))
    if rest:
        return fail("bsub: this fake reads the job from stdin only", 255)
    script = sys.stdin.read()
    options = {**lsf_options(directive_args(script, "#BSUB"))[0], **given}  # the command line wins
    if "W" in options and not valid_runlimit(str(options["W"])):
        return fail(f"{options['W']}: Bad RUNLIMIT specification. Job not submitted.", 255)
    held = "H" in options
    with jobs_state() as state:
        job = new_job(state, "lsf", script, name=options.get("J") or "NONAME", description=options.get("Jd") or "",
                      output=options.get("oo") or options.get("o") or os.devnull,
                      error=options.get("eo") or options.get("e") or os.devnull,
                      queue=options.get("q") or "normal", options=options, state="PSUSP" if held else "PEND",
                      pend_reason="The job was suspended by the user while pending;" if held
                      else "New job is waiting for scheduling;", exit_reason="")
    where = f"queue <{options['q']}>" if "q" in options else "default queue <normal>"
    print(f"Job <{job['id']}> is submitted to {where}.")
    if not held:
        start_runner(job["id"])
    return 0


def bjobs_record(job: dict, fields: list[str]) -> dict:
    values = {
        "jobid": job["id"], "stat": job["state"], "job_name": job["name"], "job_description": job["description"],
        "exit_code": "" if job["exit"] in (None, 0) else str(job["exit"]), "exit_reason": job["exit_reason"],
        "pend_reason": job["pend_reason"] if job["state"] in ("PEND", "PSUSP") else "",
        "start_time": lsf_time(job["start"]), "finish_time": lsf_time(job["end"]), "queue": job["queue"],
    }
    return {field.upper(): values[field] for field in fields}


def bjobs(args: list[str]) -> int:
    options, ids = lsf_options(list(args), BJOBS_FLAGS)
    fields = str(options.get("o", "jobid stat")).split()
    with jobs_state() as state:
        jobs = state["jobs"]
    records, code = [], 0
    if ids:
        for job_id in ids:
            if job_id in jobs:
                records.append(bjobs_record(jobs[job_id], fields))
            else:
                records.append({"JOBID": job_id, "ERROR": f"Job <{job_id}> is not found"})
                code = 255
    else:
        records = [bjobs_record(job, fields) for job in jobs.values()
                   if job["scheduler"] == "lsf" and ("a" in options or job["state"] not in FINISHED)]
        if not records:
            print("No job found", file=sys.stderr)
    print(json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}, indent=2))
    return code


def bkill(ids: list[str]) -> int:
    code = 0
    with jobs_state() as state:
        for job_id in ids:
            job = state["jobs"].get(job_id)
            if job is None:
                print(f"Job <{job_id}>: No matching job found", file=sys.stderr)
                code = 255
            elif job["state"] in FINISHED:
                print(f"Job <{job_id}>: Job has already finished", file=sys.stderr)
                code = 255
            else:
                print(f"Job <{job_id}> is being terminated")
                job["killed"] = True
                if job["state"] in ("PEND", "PSUSP"):
                    job.update(state="EXIT", end=time.time(), exit_reason="TERM_OWNER: job killed by owner")
                else:
                    signal_job(job, signal.SIGINT)
    return code


# --- running a job ------------------------------------------------------------------------


def signal_job(job: dict, number: int) -> None:
    """A job that has not started its script yet is killed by its runner when it does."""
    if job["pgid"]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job["pgid"], number)


def writable(path: str):
    """The job's output file; where it cannot be written (a folder gone), nowhere."""
    try:
        return open(path, "w")
    except OSError:
        return open(os.devnull, "w")


def run(job_id: str) -> int:
    with jobs_state() as state:
        job = state["jobs"][job_id]
        if job["state"] in FINISHED:
            return 0  # deleted before it ran
        job.update(state="R" if job["scheduler"] == "pbs" else "RUN", start=time.time(), comment="Job run")
    env = {"PATH": job["path"], "HOME": job["home"]}
    if job["scheduler"] == "pbs":
        env.update(job["variables"], PBS_JOBID=job_id, PBS_O_WORKDIR=job["cwd"])
    else:
        env.update(LSB_JOBID=job_id, LS_SUBCWD=job["cwd"])
    with writable(job["output"]) as stdout, writable(job["error"]) as stderr:
        process = subprocess.Popen(["bash", job["script"]], stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                   cwd=job["home"], env=env, start_new_session=True)
    with jobs_state() as state:
        job = state["jobs"][job_id]
        job["pgid"] = process.pid
        if job["killed"]:  # qdel / bkill came before the job had a process
            os.killpg(process.pid, signal.SIGTERM if job["scheduler"] == "pbs" else signal.SIGINT)
    returncode = process.wait()
    with jobs_state() as state:
        job = state["jobs"][job_id]
        if job["scheduler"] == "pbs":
            exit_status = returncode if returncode >= 0 else 256 - returncode  # killed by a signal: 256 + n
            job.update(state="F", exit=exit_status, comment="Job run and finished")
        else:
            code = returncode if returncode >= 0 else 128 - returncode  # killed by a signal: 128 + n
            job.update(state="DONE" if code == 0 else "EXIT", exit=code,
                       exit_reason="TERM_OWNER: job killed by owner" if job["killed"] else "")
        job["end"] = time.time()
    return 0


PROGRAMS = {"qsub": qsub, "qstat": qstat, "qselect": qselect, "qdel": qdel, "bsub": bsub, "bjobs": bjobs,
            "bkill": bkill}


def main(program: str, args: list[str]) -> None:
    with open(state_dir() / "calls.log", "a") as log:
        log.write(json.dumps({"program": program, "args": args}) + "\n")
    sys.exit(PROGRAMS[program](args))


if __name__ == "__main__" and sys.argv[1:2] == ["--run"]:
    sys.exit(run(sys.argv[2]))
