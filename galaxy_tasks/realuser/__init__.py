"""Jobs run as the real user: the privileged helper (`helper`), the only code of the
project that runs with privilege. It is given a job id and nothing else (docs/security.md)."""
