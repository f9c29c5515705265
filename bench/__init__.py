"""``make bench``: our apps against the servers people usually pick, on one machine.

Each module has one job: ``upstream`` fakes OpenAI, ``loadgen`` plays the browsers,
``naive_flask``, ``fastapi_app``, ``express/`` and ``relay`` are the comparison
servers, ``targets`` says how to start each one, ``procs`` starts, measures and
stops processes, ``run`` runs the phases and ``report`` writes the table and plot.
"""
