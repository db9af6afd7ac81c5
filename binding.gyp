{
  "targets": [
    {
      "target_name": "takeover",
      "sources": ["native/takeover.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags!": ["-O3"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
      "cflags_c": ["-std=gnu11"]
    }
  ]
}
