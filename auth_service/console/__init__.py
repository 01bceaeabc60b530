"""``kfaar console``: the operator console in the browser, over AdminService (docs/CONSOLE.md)."""
