"""Reports over contracts, read-only or opt-in writers: status table, dashboard, merge of runs,
coverage, graph, equations, audit, binding checks, staleness, contract diff and scaffolding.
"""
