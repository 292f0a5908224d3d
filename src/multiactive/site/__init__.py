"""The site node: one process per site, wiring journal, state, links, ingress and processor."""
