#!/usr/bin/python3
"""Optuna ask/tell throughput with SQLite storage and several processes (the baseline of
tools/bench_orchestrator). Prints one JSON line: trials, seconds, trials_per_s, errors.

    bench_optuna.py --db FILE --processes 8 --trials-per-process 50
"""
import argparse
import json
import multiprocessing
import time


def worker(db, study_name, n, results):
    import optuna  # imported per process, as separate workers would
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 60}})
    study = optuna.load_study(study_name=study_name, storage=storage)
    done, errors = 0, 0
    for _ in range(n):
        try:
            trial = study.ask()
            lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            study.tell(trial, lr)  # a no-op "training run"
            done += 1
        except Exception as e:  # "database is locked" and friends
            errors += 1
            results.put(("error", repr(e)[:200]))
    results.put(("done", done, errors))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--trials-per-process", type=int, default=50)
    args = parser.parse_args()
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="bench", storage=f"sqlite:///{args.db}", direction="minimize")
    results = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(args.db, "bench", args.trials_per_process, results))
             for _ in range(args.processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    done = errors = finished = 0
    messages = []
    while finished < len(procs):
        item = results.get()
        if item[0] == "done":
            done += item[1]
            errors += item[2]
            finished += 1
        else:
            messages.append(item[1])
    for p in procs:
        p.join()
    seconds = time.perf_counter() - start
    print(json.dumps({"trials": done, "seconds": seconds, "trials_per_s": done / seconds,
                      "errors": errors, "first_error": messages[0] if messages else "",
                      "optuna": optuna.__version__}))


if __name__ == "__main__":
    main()
