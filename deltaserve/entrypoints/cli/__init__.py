"""The `deltaserve` command line: one module per subcommand, flags generated from settings.

`main.py` lists the subcommands and parses; `parser.py` turns a settings class into flags;
`serve.py`, `demo.py`, `compress.py`, `mix.py` each hold one subcommand. Heavy imports (torch,
the app) happen inside the subcommand's function, so `deltaserve --help` stays instant.
"""
