"""The foundation every capability stands on: the configuration and where its secrets
come from (`config`, `config_sources`), the database pool and migrations (`database`),
problem+json refusals (`problems`), JSON bodies (`jsonbody`), timestamps and deadline
timers, readiness. It imports no capability."""
