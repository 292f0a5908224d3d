"""Wire protocol: sans-I/O framing and frame bodies, and the asyncio connection that moves them."""
