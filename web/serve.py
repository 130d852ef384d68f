#!/usr/bin/env python3
"""Serve web/dist (python3's http.server, threaded) with one extra URL for headless runs.

`/hold` answers only after 10 minutes (or when the client gives up): the page keeps a fetch of it
open during an `?auto` run and aborts it when the result is shown. Chromium's
`--virtual-time-budget` does not let time run while a fetch is pending, so
`chromium --headless --screenshot --virtual-time-budget=...` captures the finished page.
"""
import functools
import http.server
import sys
import time


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript"}

    def do_GET(self):
        if self.path.startswith("/hold"):
            try:
                for _ in range(600):
                    time.sleep(1)
                self.send_response(204)
                self.end_headers()
            except OSError:
                pass
            return
        super().do_GET()

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8020
    directory = sys.argv[2] if len(sys.argv) > 2 else "."
    handler = functools.partial(Handler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    print(f"URL: http://127.0.0.1:{port}/   (auto-run: http://127.0.0.1:{port}/?auto=1&schedule=exp:0.25,0)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
