/*
 * takeover.c: the few syscalls JS cannot make for a socket takeover.
 *
 * SOCK_SEQPACKET Unix sockets, SO_PEERCRED, sendmsg/recvmsg with SCM_RIGHTS,
 * readiness watching through uv_poll, dup/close of raw fds and fd-table growth.
 * Everything else (protocol, state, decisions) lives in TypeScript (src/native.ts).
 *
 * Conventions: every fd created here is O_NONBLOCK and close-on-exec; syscall
 * failures throw Errors shaped like Node's system errors (code, errno, syscall).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

/* SCM_MAX_FD in the kernel: the most fds one sendmsg can carry. */
#define MAX_FDS 253

/* Room for MAX_FDS fds in one cmsg, aligned as the kernel expects, plus the
 * SCM_CREDENTIALS cmsg that receive_message asks for. */
typedef union {
  struct cmsghdr align;
  char buf[CMSG_SPACE(sizeof(int) * MAX_FDS) + CMSG_SPACE(sizeof(struct ucred))];
} control_buf;

/* ---- value helpers: each returns NULL on failure, and set() accepts NULL, so
 * building an object is one chain of && with a single failure path. -------- */

static napi_value num(napi_env env, double v) {
  napi_value r;
  return napi_create_double(env, v, &r) == napi_ok ? r : NULL;
}
static napi_value str(napi_env env, const char *s) {
  napi_value r;
  return napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r) == napi_ok ? r : NULL;
}
static napi_value boolean(napi_env env, bool b) {
  napi_value r;
  return napi_get_boolean(env, b, &r) == napi_ok ? r : NULL;
}
static napi_value object(napi_env env) {
  napi_value r;
  return napi_create_object(env, &r) == napi_ok ? r : NULL;
}
static bool set(napi_env env, napi_value obj, const char *name, napi_value v) {
  return obj && v && napi_set_named_property(env, obj, name, v) == napi_ok;
}

/* ---- errors ---------------------------------------------------------------- */

static const char *errno_name(int err, char *buf, size_t len) {
  switch (err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(EINTR) E(EIO) E(EBADF) E(EAGAIN) E(ENOMEM) E(EACCES)
    E(EFAULT) E(EBUSY) E(EEXIST) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE)
    E(EMFILE) E(ENOSPC) E(EROFS) E(EPIPE) E(ENAMETOOLONG) E(ELOOP) E(ENOTSOCK)
    E(EDESTADDRREQ) E(EMSGSIZE) E(EPROTOTYPE) E(ENOPROTOOPT) E(EPROTONOSUPPORT)
    E(EOPNOTSUPP) E(EAFNOSUPPORT) E(EADDRINUSE) E(EADDRNOTAVAIL) E(ENETDOWN)
    E(ENETUNREACH) E(ECONNABORTED) E(ECONNRESET) E(ENOBUFS) E(EISCONN)
    E(ENOTCONN) E(ETOOMANYREFS) E(ETIMEDOUT) E(ECONNREFUSED) E(EHOSTUNREACH)
    E(EALREADY) E(EINPROGRESS)
#undef E
  }
  snprintf(buf, len, "E%d", err);
  return buf;
}

/* Throw Error(`${syscall} ${code}`) with code, errno (negative) and syscall. */
static napi_value throw_errno(napi_env env, const char *syscall, int err) {
  char name[16], msg[128];
  napi_value error;
  const char *code = errno_name(err, name, sizeof name);
  snprintf(msg, sizeof msg, "%s %s", syscall, code);
  napi_value c = str(env, code), m = str(env, msg);
  if (c && m && napi_create_error(env, c, m, &error) == napi_ok &&
      set(env, error, "errno", num(env, -err)) && set(env, error, "syscall", str(env, syscall)))
    napi_throw(env, error);
  return NULL;
}

/* napi_throw_* return a status; these return NULL so that callers can `return` them. */
static napi_value type_error(napi_env env, const char *code, const char *msg) {
  napi_throw_type_error(env, code, msg);
  return NULL;
}
static napi_value range_error(napi_env env, const char *msg) {
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
  return NULL;
}

/* A napi call failed: make sure *something* is thrown, then bail out. */
static napi_value napi_failed(napi_env env) {
  const napi_extended_error_info *info = NULL;
  bool pending = false;
  napi_get_last_error_info(env, &info);
  const char *why = info && info->error_message ? info->error_message : "N-API call failed";
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, "ERR_NAPI", why);
  return NULL;
}
#define CHECK(call) do { if ((call) != napi_ok) return napi_failed(env); } while (0)

/* Close fds that arrived but will never reach JS, keeping errno intact. */
static void close_all(const int *fds, size_t n) {
  int saved = errno;
  for (size_t i = 0; i < n; i++) close(fds[i]);
  errno = saved;
}

/* ---- arguments: TypeError for wrong types, RangeError for bad numbers ----- */

static bool get_int(napi_env env, napi_value v, const char *name, int *out) {
  napi_valuetype t;
  double d;
  char msg[96];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must be of type number", name);
    return type_error(env, "ERR_INVALID_ARG_TYPE", msg), false;
  }
  napi_get_value_double(env, v, &d);
  /* Range first (this also rejects NaN), so that the cast is defined. */
  if (!(d >= 0 && d <= INT32_MAX) || (double)(int)d != d) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must be an integer >= 0", name);
    return range_error(env, msg), false;
  }
  *out = (int)d;
  return true;
}
#define GET_INT(v, name, out) do { if (!get_int(env, (v), (name), (out))) return NULL; } while (0)

/* Fill a sockaddr_un from a JS string; a path that would not fit is ENAMETOOLONG. */
static bool get_sockaddr(napi_env env, napi_value v, const char *syscall, struct sockaddr_un *sa) {
  size_t len;
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"path\" argument must be of type string"), false;
  if (len == 0 || len >= sizeof sa->sun_path) /* "" would autobind an abstract address */
    return throw_errno(env, syscall, len == 0 ? ENOENT : ENAMETOOLONG), false;
  napi_get_value_string_utf8(env, v, sa->sun_path, sizeof sa->sun_path, &len);
  return true;
}

/* Fetch n arguments; missing ones are undefined and so fail the type checks. */
#define ARGS(n) \
  size_t argc = (n); napi_value argv[(n)]; \
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL))

static napi_value fd_or_throw(napi_env env, int fd, const char *syscall) {
  return fd < 0 ? throw_errno(env, syscall, errno) : num(env, fd);
}

/* ---- Unix sockets ---------------------------------------------------------- */

static napi_value unix_listen(napi_env env, napi_callback_info info) {
  ARGS(3);
  struct sockaddr_un sa;
  char type[16];
  int backlog, stype;
  if (!get_sockaddr(env, argv[0], "bind", &sa)) return NULL;
  if (napi_get_value_string_utf8(env, argv[1], type, sizeof type, NULL) != napi_ok)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"type\" argument must be of type string");
  if (strcmp(type, "seqpacket") == 0) stype = SOCK_SEQPACKET;
  else if (strcmp(type, "stream") == 0) stype = SOCK_STREAM;
  else return type_error(env, "ERR_INVALID_ARG_VALUE", "The \"type\" argument must be 'seqpacket' or 'stream'");
  GET_INT(argv[2], "backlog", &backlog);

  int fd = socket(AF_UNIX, stype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  const char *failed = bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ? "bind"
                     : listen(fd, backlog) < 0 ? "listen" : NULL;
  if (failed) {
    close_all(&fd, 1);
    return throw_errno(env, failed, errno);
  }
  return num(env, fd);
}

/* AF_UNIX connects complete at once or fail (EAGAIN when the backlog is full):
 * there is no EINPROGRESS to wait for, even on a non-blocking socket. */
static napi_value unix_connect(napi_env env, napi_callback_info info) {
  ARGS(1);
  struct sockaddr_un sa;
  int r;
  if (!get_sockaddr(env, argv[0], "connect", &sa)) return NULL;
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  do r = connect(fd, (struct sockaddr *)&sa, sizeof sa); while (r < 0 && errno == EINTR);
  if (r < 0) {
    close_all(&fd, 1);
    return throw_errno(env, "connect", errno);
  }
  return num(env, fd);
}

static napi_value accept_fd(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd, r;
  GET_INT(argv[0], "fd", &fd);
  do r = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return num(env, -1);
  return fd_or_throw(env, r, "accept4");
}

/* Who is at the other end, as the kernel recorded it at connect(). */
static napi_value peer_credentials(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  struct ucred cred;
  socklen_t len = sizeof cred;
  GET_INT(argv[0], "fd", &fd);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return throw_errno(env, "getsockopt", errno);
  napi_value obj = object(env);
  if (!set(env, obj, "pid", num(env, cred.pid)) || !set(env, obj, "uid", num(env, cred.uid)) ||
      !set(env, obj, "gid", num(env, cred.gid)))
    return napi_failed(env);
  return obj;
}

/* ---- messages -------------------------------------------------------------- */

/* The "fds" argument: an Array of at most MAX_FDS fds. */
static bool get_fds(napi_env env, napi_value v, int *fds, uint32_t *nfds) {
  bool is_array = false;
  if (napi_is_array(env, v, &is_array) != napi_ok || !is_array)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"fds\" argument must be an Array"), false;
  if (napi_get_array_length(env, v, nfds) != napi_ok) return napi_failed(env), false;
  if (*nfds > MAX_FDS) return range_error(env, "At most 253 fds fit in one message"), false;
  for (uint32_t i = 0; i < *nfds; i++) {
    napi_value el;
    if (napi_get_element(env, v, i, &el) != napi_ok) return napi_failed(env), false;
    if (!get_int(env, el, "fds[i]", &fds[i])) return false;
  }
  return true;
}

/* fds as one SCM_RIGHTS cmsg in ctl; none attaches nothing (an empty SCM_RIGHTS is EINVAL). */
static void attach_fds(struct msghdr *msg, control_buf *ctl, const int *fds, uint32_t nfds) {
  if (nfds == 0) return;
  memset(ctl, 0, sizeof *ctl);
  msg->msg_control = ctl->buf;
  msg->msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
  struct cmsghdr *c = CMSG_FIRSTHDR(msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
  memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
}

static napi_value send_message(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd, fds[MAX_FDS];
  void *data = NULL;
  size_t len = 0;
  bool is_buffer = false;
  uint32_t nfds = 0;
  GET_INT(argv[0], "fd", &fd);
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"data\" argument must be a Buffer");
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  if (!get_fds(env, argv[2], fds, &nfds)) return NULL;
  /* Zero bytes and no fds is exactly what the receiver reads at EOF: refuse it. */
  if (len == 0 && nfds == 0) return range_error(env, "An empty message would read as EOF");

  struct iovec iov = { .iov_base = data, .iov_len = len };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  control_buf ctl;
  attach_fds(&msg, &ctl, fds, nfds);
  ssize_t r;
  do r = sendmsg(fd, &msg, MSG_NOSIGNAL); while (r < 0 && errno == EINTR);
  if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return boolean(env, false);
  if (r < 0) return throw_errno(env, "sendmsg", errno);
  /* SOCK_SEQPACKET sends are atomic; only a SOCK_STREAM socket can come back short. */
  if ((size_t)r != len) {
    napi_throw_error(env, "ERR_PARTIAL_SEND", "sendmsg sent part of the message (not a SOCK_SEQPACKET socket?)");
    return NULL;
  }
  return boolean(env, true);
}

/* After closing the fds of a broken message: Error with a code and their count. */
static napi_value throw_truncated(napi_env env, const char *code, const char *message, size_t closed) {
  napi_value error, c = str(env, code), m = str(env, message);
  if (c && m && napi_create_error(env, c, m, &error) == napi_ok && set(env, error, "closedFds", num(env, closed)))
    napi_throw(env, error);
  return NULL;
}

static napi_value receive_message(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd, max, fds[MAX_FDS];
  size_t nfds = 0;
  ssize_t r;
  GET_INT(argv[0], "fd", &fd);
  GET_INT(argv[1], "maxBytes", &max);
  char *buf = malloc(max > 0 ? (size_t)max : 1);
  if (buf == NULL) return throw_errno(env, "malloc", ENOMEM);

  control_buf ctl;
  struct iovec iov = { .iov_base = buf, .iov_len = (size_t)max };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf };
  /* On SOCK_SEQPACKET, recvmsg returns 0 both at EOF and for a zero-length message,
   * with the same flags. What differs: with SO_PASSCRED set on the receiving socket,
   * the kernel attaches SCM_CREDENTIALS to every message it delivers (also to those
   * queued before the option was set), and there is no message, so no cmsg, at EOF.
   * The option is on only around this call: a socket that *sends* with SO_PASSCRED
   * set is autobound to an abstract address, a side effect nobody asked for. */
  int on = 1, off = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0) {
    free(buf);
    return throw_errno(env, "setsockopt", errno);
  }
  /* MSG_CMSG_CLOEXEC: received fds are close-on-exec from birth, no fcntl race. */
  do r = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC); while (r < 0 && errno == EINTR);
  int err = errno;
  setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &off, sizeof off);
  if (r < 0) {
    free(buf);
    if (err != EAGAIN && err != EWOULDBLOCK) return throw_errno(env, "recvmsg", err);
    napi_value null;
    CHECK(napi_get_null(env, &null));
    return null;
  }

  bool delivered = false;
  /* Linux merges SCM_RIGHTS cmsgs when sending, but walk them all regardless. */
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    delivered = true;
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
      int f;
      memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      if (nfds < MAX_FDS) fds[nfds++] = f;
      else close(f); /* cannot happen with control_buf's size, but never leak */
    }
  }
  /* MSG_CTRUNC: the kernel dropped fds (typically RLIMIT_NOFILE reached) and the
   * message is useless. MSG_TRUNC: its bytes did not fit in maxBytes and the tail
   * is gone. Either way close what did arrive and fail loudly. */
  if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) {
    free(buf);
    close_all(fds, nfds);
    return msg.msg_flags & MSG_CTRUNC
      ? throw_truncated(env, "ERR_FDS_TRUNCATED", "recvmsg MSG_CTRUNC: file descriptors were lost (fd limit reached?)", nfds)
      : throw_truncated(env, "ERR_MESSAGE_TRUNCATED", "recvmsg MSG_TRUNC: message longer than maxBytes", nfds);
  }
  /* Zero bytes and no fds is what JS reads as EOF: a real message of that shape must
   * not pass for one (the peer would look gone while it still sends). */
  if (r == 0 && nfds == 0 && delivered) {
    free(buf);
    return throw_truncated(env, "ERR_EMPTY_MESSAGE", "recvmsg: a zero-length message (not EOF)", 0);
  }

  napi_value obj = object(env), data = NULL, arr = NULL;
  bool ok = napi_create_buffer_copy(env, (size_t)r, buf, NULL, &data) == napi_ok &&
            napi_create_array_with_length(env, nfds, &arr) == napi_ok;
  for (size_t i = 0; ok && i < nfds; i++) {
    napi_value v = num(env, fds[i]);
    ok = v && napi_set_element(env, arr, (uint32_t)i, v) == napi_ok;
  }
  ok = ok && set(env, obj, "data", data) && set(env, obj, "fds", arr);
  free(buf);
  if (!ok) { /* the fds never reached JS, so nobody else could ever close them */
    close_all(fds, nfds);
    return napi_failed(env);
  }
  return obj;
}

/* ---- readiness watching through libuv -------------------------------------- */

/*
 * Lifetime. The poller_t is shared by two owners that go away independently:
 *  - libuv, which uses the embedded uv_poll_t until the uv_close callback has run;
 *  - the JS Poller object, whose methods reach the poller_t through napi_wrap for
 *    as long as the object exists, i.e. also after close().
 * Each owner sets its flag when it lets go and the last one frees the memory
 * (release_poller). Freeing in the uv_close callback alone, as this code once did,
 * left close()/stop()/start() on an already closed Poller using freed memory.
 *
 * While open, `self` is a strong reference, so an open Poller is never collected:
 * the loop may call back into it at any time. close() drops every JS reference
 * (callback, self, async context), so a closed Poller holds nothing alive and can
 * be collected. A Poller that is dropped without close() is deliberately NOT closed
 * when collected: closing a uv_poll_t removes its fd from epoll, and by then the fd
 * may have been closed and its number reused by another handle, which would then
 * silently stop receiving events. Such a Poller stays registered (inactive, if
 * stopped) until its environment is torn down, which closes it (poller_cleanup).
 */
typedef struct {
  uv_poll_t handle;
  napi_env env;
  napi_ref callback;  /* strong until close(): the loop may call it at any time */
  napi_ref self;      /* the Poller object: callback receiver and async resource */
  napi_async_context async;
  bool closed;        /* uv_close was called: the handle must not be used again */
  bool handle_done;   /* libuv ran the close callback and no longer touches this memory */
  bool object_done;   /* the JS object was finalized (or never wrapped): no method can reach us */
} poller_t;

/* Marks `this` as one of our Pollers: napi_unwrap alone would also accept an
 * object wrapped by another addon and hand back its pointer. */
static const napi_type_tag poller_tag = { 0x7a6b3c1d9e2f4051ULL, 0x8c4d2e6f1a3b5c70ULL };

static void release_poller(poller_t *p) {
  if (p->handle_done && p->object_done) free(p);
}

static void on_poll_closed(uv_handle_t *h) {
  poller_t *p = h->data;
  p->handle_done = true;
  release_poller(p);
}

static void close_handle(poller_t *p) {
  p->closed = true;
  /* uv_close stops the watch (and drops the fd from epoll) at once; the memory
   * stays in use by libuv until on_poll_closed. */
  uv_close((uv_handle_t *)&p->handle, on_poll_closed);
}

/* Drop the JS values the poller holds. Safe on a half-built poller (NULL fields). */
static void release_js(napi_env env, poller_t *p) {
  if (p->callback) napi_delete_reference(env, p->callback);
  if (p->self) napi_delete_reference(env, p->self);
  if (p->async) napi_async_destroy(env, p->async);
  p->callback = p->self = NULL;
  p->async = NULL;
}

static void on_poll(uv_poll_t *h, int status, int events) {
  poller_t *p = h->data;
  napi_env env = p->env;
  napi_handle_scope scope;
  napi_value cb, recv, result, argv[3];
  bool pending = false;
  if (p->closed || napi_open_handle_scope(env, &scope) != napi_ok) return;
  if (napi_get_reference_value(env, p->callback, &cb) == napi_ok &&
      napi_get_reference_value(env, p->self, &recv) == napi_ok &&
      (argv[0] = num(env, status)) && (argv[1] = boolean(env, events & UV_READABLE)) &&
      (argv[2] = boolean(env, events & UV_WRITABLE)))
    /* make_callback, not call_function: it drains nextTicks and microtasks
     * afterwards like any libuv-driven callback. It needs an object receiver.
     * The callback may close() the Poller: p stays valid (recv is on the stack,
     * so the object cannot be finalized yet), but p's references must not be
     * used after this call. */
    napi_make_callback(env, p->async, recv, cb, 3, argv, &result);
  /* A throw in the callback must reach 'uncaughtException', not vanish. */
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
  napi_close_handle_scope(env, scope);
}

/* Environment teardown (a worker exiting) before close(): still close the handle.
 * It runs before N-API's own teardown (hooks run in reverse order of registration),
 * which frees the references and finalizes the object. The references are left to
 * that teardown: napi_async_destroy here would queue async_hooks work on an
 * environment that is shutting down. */
static void poller_cleanup(void *arg) {
  close_handle(arg);
}

/* The JS object is gone: after close() and a GC, or at environment teardown. */
static void poller_finalize(napi_env env, void *data, void *hint) {
  poller_t *p = data;
  (void)hint;
  /* Not expected (`self` keeps an open Poller alive, and teardown runs
   * poller_cleanup first), but never free a handle libuv still uses. */
  if (!p->closed) {
    napi_remove_env_cleanup_hook(env, poller_cleanup, p);
    close_handle(p);
  }
  p->object_done = true;
  release_poller(p);
}

/* The poller behind `this`, or NULL with a TypeError thrown. Methods go through
 * `this`, not through per-function data, so that a method detached from its
 * Poller cannot outlive the memory: the object being alive is what keeps p alive. */
static poller_t *this_poller(napi_env env, napi_callback_info info, size_t argc, napi_value *argv) {
  napi_value self;
  void *p = NULL;
  bool tagged = false;
  if (napi_get_cb_info(env, info, &argc, argc ? argv : NULL, &self, NULL) != napi_ok)
    return napi_failed(env), NULL;
  if (napi_check_object_type_tag(env, self, &poller_tag, &tagged) != napi_ok || !tagged ||
      napi_unwrap(env, self, &p) != napi_ok || p == NULL)
    return type_error(env, "ERR_INVALID_THIS", "Value of \"this\" must be of type Poller"), NULL;
  return p;
}

static napi_value poller_start(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  bool readable, writable;
  poller_t *p = this_poller(env, info, 2, argv);
  if (p == NULL) return NULL;
  if (napi_get_value_bool(env, argv[0], &readable) != napi_ok || napi_get_value_bool(env, argv[1], &writable) != napi_ok)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"readable\" and \"writable\" arguments must be booleans");
  if (p->closed) {
    napi_throw_error(env, "ERR_POLLER_CLOSED", "Poller is closed");
    return NULL;
  }
  int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
  int r = events ? uv_poll_start(&p->handle, events, on_poll) : uv_poll_stop(&p->handle);
  return r < 0 ? throw_errno(env, "uv_poll_start", -r) : NULL;
}

/* A stopped uv_poll_t is inactive, so it does not keep the loop alive. */
static napi_value poller_stop(napi_env env, napi_callback_info info) {
  poller_t *p = this_poller(env, info, 0, NULL);
  if (p != NULL && !p->closed) uv_poll_stop(&p->handle);
  return NULL;
}

static napi_value poller_close(napi_env env, napi_callback_info info) {
  poller_t *p = this_poller(env, info, 0, NULL);
  if (p == NULL || p->closed) return NULL;
  napi_remove_env_cleanup_hook(env, poller_cleanup, p);
  /* Dropping `self` lets the object be collected; poller_finalize then frees p
   * (or on_poll_closed does, whichever comes last). */
  release_js(env, p);
  close_handle(p);
  return NULL;
}

static napi_value poll_fd(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  napi_valuetype t;
  uv_loop_t *loop;
  GET_INT(argv[0], "fd", &fd);
  if (napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"onEvent\" argument must be of type function");
  CHECK(napi_get_uv_event_loop(env, &loop));
  poller_t *p = calloc(1, sizeof *p);
  if (p == NULL) return throw_errno(env, "calloc", ENOMEM);
  int r = uv_poll_init(loop, &p->handle, fd);
  if (r < 0) {
    free(p); /* a failed uv_poll_init leaves nothing registered */
    return throw_errno(env, "uv_poll_init", -r);
  }
  p->handle.data = p;
  p->env = env;
  napi_property_descriptor methods[] = {
    { "start", NULL, poller_start, NULL, NULL, NULL, napi_enumerable, NULL },
    { "stop", NULL, poller_stop, NULL, NULL, NULL, napi_enumerable, NULL },
    { "close", NULL, poller_close, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_value obj = object(env), name = str(env, "takeover.Poller");
  bool wrapped = obj && name && napi_define_properties(env, obj, 3, methods) == napi_ok &&
                 napi_type_tag_object(env, obj, &poller_tag) == napi_ok &&
                 napi_wrap(env, obj, p, poller_finalize, NULL, NULL) == napi_ok;
  /* Unwrapped, no finalizer will ever come: the handle is the only owner left. */
  if (!wrapped) p->object_done = true;
  if (!wrapped || napi_async_init(env, obj, name, &p->async) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &p->callback) != napi_ok ||
      napi_create_reference(env, obj, 1, &p->self) != napi_ok ||
      napi_add_env_cleanup_hook(env, poller_cleanup, p) != napi_ok) {
    napi_value thrown = napi_failed(env); /* first, while the error info is this failure's */
    release_js(env, p);
    close_handle(p);
    return thrown;
  }
  return obj;
}

/* ---- raw fds --------------------------------------------------------------- */

static napi_value dup_fd(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  GET_INT(argv[0], "fd", &fd);
  return fd_or_throw(env, fcntl(fd, F_DUPFD_CLOEXEC, 0), "fcntl");
}

static napi_value close_fd(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  GET_INT(argv[0], "fd", &fd);
  /* Linux releases the fd even when close() reports EINTR: never retry. */
  if (close(fd) < 0 && errno != EINTR) return throw_errno(env, "close", errno);
  return NULL;
}

/* Size the fd table once, up front: growing it step by step during a big recvmsg
 * is slow in a multithreaded process. F_DUPFD takes the lowest free fd >= target,
 * so unlike dup2 it can never replace an fd that is in use. */
static napi_value grow_fd_table(napi_env env, napi_callback_info info) {
  ARGS(1);
  int target;
  struct rlimit rl;
  GET_INT(argv[0], "highestFd", &target);
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return throw_errno(env, "getrlimit", errno);
  if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)target >= rl.rlim_cur)
    target = rl.rlim_cur > 0 ? (int)(rl.rlim_cur - 1) : 0;
  int src = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (src < 0) return errno == EMFILE ? NULL : throw_errno(env, "open", errno); /* EMFILE: full already */
  int high = fcntl(src, F_DUPFD_CLOEXEC, target), err = errno;
  close(src);
  if (high >= 0) close(high);
  /* EMFILE/EINVAL: every fd from target up is taken, so the table is that big. */
  else if (err != EMFILE && err != EINVAL) return throw_errno(env, "fcntl", err);
  return NULL;
}

static napi_value fd_limit(napi_env env, napi_callback_info info) {
  (void)info;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return throw_errno(env, "getrlimit", errno);
  napi_value obj = object(env);
  if (!set(env, obj, "soft", num(env, rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur)) ||
      !set(env, obj, "hard", num(env, rl.rlim_max == RLIM_INFINITY ? INFINITY : (double)rl.rlim_max)))
    return napi_failed(env);
  return obj;
}

/* CPU time of the calling thread (the event loop's), in ms: how long a step of work ran,
 * without the time the thread waited for a core. Node has no such clock before 23.9. */
static napi_value thread_cpu_ms(napi_env env, napi_callback_info info) {
  (void)info;
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0) return throw_errno(env, "clock_gettime", errno);
  return num(env, ts.tv_sec * 1e3 + ts.tv_nsec / 1e6);
}

/* ---- what an fd is ---------------------------------------------------------
 *
 * One fd's report is INSPECT_FIELDS numbers, at the offsets below (native.ts reads them with
 * the same layout): the successor checks every inherited connection, 10,000 at a time, so a
 * chunk of fds is inspected in one call that builds no JS value per fd. */
enum { F_DOMAIN, F_TYPE, F_LISTENING, F_TCP_STATE, F_NO_DELAY, F_ERRNO, INSPECT_FIELDS };
/* The addon's own codes for the domain and the type, not the kernel's: SOCK_STREAM is not 1
 * on every architecture. The names are socket_info's, in this order. */
enum { D_OTHER, D_UNIX, D_INET, D_INET6 };
enum { T_OTHER, T_STREAM, T_SEQPACKET, T_DGRAM };
static const char *const domain_names[] = { "other", "unix", "inet", "inet6" };
static const char *const type_names[] = { "other", "stream", "seqpacket", "dgram" };

/* Fills o[0..INSPECT_FIELDS) for fd; a field not read is -1. A failing getsockopt (a closed
 * or negative fd, a file) leaves its errno in o[F_ERRNO] and stops there. Three calls for a TCP
 * socket, each about 0.5-1 us: an inet socket that answers TCP_INFO is a TCP one (no other inet
 * protocol handles IPPROTO_TCP options), so a stream socket without asking SO_TYPE, and its state
 * says whether it listens (SO_ACCEPTCONN reads the same sk_state). TCP_NODELAY is carried by the
 * open file description, which SCM_RIGHTS passes. */
static void inspect_fd(int fd, int32_t *o) {
  int domain, type, v;
  socklen_t len = sizeof(int);
  struct tcp_info ti;
  socklen_t tlen = sizeof ti;
  for (int i = 0; i < INSPECT_FIELDS; i++) o[i] = -1;
  o[F_ERRNO] = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) {
    o[F_ERRNO] = errno;
    return;
  }
  o[F_DOMAIN] = domain == AF_UNIX ? D_UNIX : domain == AF_INET ? D_INET : domain == AF_INET6 ? D_INET6 : D_OTHER;
  if ((domain == AF_INET || domain == AF_INET6) && getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen) == 0) {
    o[F_TYPE] = T_STREAM;
    o[F_TCP_STATE] = ti.tcpi_state;
    o[F_LISTENING] = ti.tcpi_state == TCP_LISTEN;
    if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) < 0) o[F_ERRNO] = errno;
    else o[F_NO_DELAY] = v != 0;
    return;
  }
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
    o[F_ERRNO] = errno;
    return;
  }
  o[F_TYPE] = type == SOCK_STREAM ? T_STREAM : type == SOCK_SEQPACKET ? T_SEQPACKET : type == SOCK_DGRAM ? T_DGRAM : T_OTHER;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0) o[F_ERRNO] = errno;
  else o[F_LISTENING] = v != 0;
}

/* What an inherited fd is, as an object (for the few fds systemd passes). */
static napi_value socket_info(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  int32_t o[INSPECT_FIELDS];
  GET_INT(argv[0], "fd", &fd);
  inspect_fd(fd, o);
  if (o[F_ERRNO] != 0) return throw_errno(env, "getsockopt", o[F_ERRNO]);
  napi_value obj = object(env);
  if (!set(env, obj, "domain", str(env, domain_names[o[F_DOMAIN]])) ||
      !set(env, obj, "type", str(env, type_names[o[F_TYPE]])) || !set(env, obj, "listening", boolean(env, o[F_LISTENING] != 0)))
    return napi_failed(env);
  return obj;
}

/* The argument `name`, an Int32Array: its elements and their count. */
static bool get_int32_array(napi_env env, napi_value v, const char *name, int32_t **data, size_t *length) {
  bool is_typedarray = false;
  napi_typedarray_type type;
  void *p = NULL;
  char msg[96];
  if (napi_is_typedarray(env, v, &is_typedarray) != napi_ok || !is_typedarray ||
      napi_get_typedarray_info(env, v, &type, length, &p, NULL, NULL) != napi_ok || type != napi_int32_array) {
    snprintf(msg, sizeof msg, "The \"%s\" argument must be an Int32Array", name);
    return type_error(env, "ERR_INVALID_ARG_TYPE", msg), false;
  }
  *data = p;
  return true;
}

/* inspectSockets(fds, out): inspect_fd for each of fds, into out[i * INSPECT_FIELDS...].
 * Throws only for bad arguments; what an fd is, or its errno, goes to out. */
static napi_value inspect_sockets(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t *fds, *out;
  size_t nfds, nout;
  if (!get_int32_array(env, argv[0], "fds", &fds, &nfds) || !get_int32_array(env, argv[1], "out", &out, &nout)) return NULL;
  if (nout / INSPECT_FIELDS < nfds) return range_error(env, "The \"out\" argument must hold 6 numbers per fd");
  for (size_t i = 0; i < nfds; i++) inspect_fd(fds[i], out + i * INSPECT_FIELDS);
  return NULL;
}

/* ---- the channel's directory ------------------------------------------------
 *
 * Everything here works relative to a directory fd (O_PATH) that the caller opened
 * and verified, never by path from the root: a path looked up again at each step can
 * be swapped between the steps by anyone who can write to a directory on the way.
 * AF_UNIX has no bindat/connectat, so bind and connect name the directory or the
 * socket file through /proc/self/fd/N, which the kernel resolves to that very inode
 * (sun_path holds 108 bytes: "/proc/self/fd/" and the fd leave the name about 80).
 */

/* dirFd: a number, or null for the current directory (only to open "/"). */
static bool get_dirfd(napi_env env, napi_value v, int *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) == napi_ok && t == napi_null) {
    *out = AT_FDCWD;
    return true;
  }
  return get_int(env, v, "dirFd", out);
}

/* A single name inside dirFd: "" only where allowed (the directory itself), no '/'. */
static bool get_name(napi_env env, napi_value v, int dirfd, bool allow_empty, char *buf, size_t size) {
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"name\" argument must be of type string"), false;
  if (len >= size) return throw_errno(env, "openat", ENAMETOOLONG), false;
  napi_get_value_string_utf8(env, v, buf, size, &len);
  if ((len == 0 && !allow_empty) || (dirfd != AT_FDCWD && strchr(buf, '/') != NULL))
    return type_error(env, "ERR_INVALID_ARG_VALUE", "The \"name\" argument must be one path component"), false;
  return true;
}
#define GET_NAME(v, dirfd, allow_empty, buf) \
  do { if (!get_name(env, (v), (dirfd), (allow_empty), (buf), sizeof (buf))) return NULL; } while (0)

static napi_value open_dir_at(napi_env env, napi_callback_info info) {
  ARGS(2);
  int dirfd;
  char name[4096];
  if (!get_dirfd(env, argv[0], &dirfd)) return NULL;
  GET_NAME(argv[1], dirfd, false, name);
  /* O_NOFOLLOW: a symlink fails (ENOTDIR with O_DIRECTORY) instead of leading elsewhere;
   * O_PATH: no read permission needed, and the fd can do nothing but name the inode. */
  return fd_or_throw(env, openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), "openat");
}

/* lstat of name in dirFd (or of dirFd itself for ""), or null when it does not exist. */
static napi_value stat_at(napi_env env, napi_callback_info info) {
  ARGS(2);
  int dirfd;
  char name[256];
  struct stat st;
  GET_INT(argv[0], "dirFd", &dirfd);
  GET_NAME(argv[1], dirfd, true, name);
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW | (name[0] ? 0 : AT_EMPTY_PATH)) < 0) {
    if (errno != ENOENT) return throw_errno(env, "fstatat", errno);
    napi_value null;
    CHECK(napi_get_null(env, &null));
    return null;
  }
  const char *type = S_ISSOCK(st.st_mode) ? "socket" : S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "directory"
                   : S_ISLNK(st.st_mode) ? "symlink" : "other";
  napi_value obj = object(env);
  if (!set(env, obj, "type", str(env, type)) || !set(env, obj, "mode", num(env, st.st_mode & 07777)) ||
      !set(env, obj, "uid", num(env, st.st_uid)))
    return napi_failed(env);
  return obj;
}

static napi_value readlink_at(napi_env env, napi_callback_info info) {
  ARGS(2);
  int dirfd;
  char name[256], target[4096];
  GET_INT(argv[0], "dirFd", &dirfd);
  GET_NAME(argv[1], dirfd, false, name);
  ssize_t n = readlinkat(dirfd, name, target, sizeof target - 1);
  if (n < 0) return throw_errno(env, "readlinkat", errno);
  target[n] = '\0';
  return str(env, target);
}

/* An O_PATH fd on name itself (a symlink is opened, not followed) that is a socket
 * file, owned by this user unless any_owner; -1 with errno otherwise (ENOTSOCK,
 * EPERM, or openat's). *st is the file's stat. */
static int open_socket_file(int dirfd, const char *name, bool any_owner, struct stat *st) {
  int file = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC), err = 0;
  if (file < 0) return -1;
  if (fstat(file, st) < 0) err = errno;
  else if (!S_ISSOCK(st->st_mode)) err = ENOTSOCK;
  else if (!any_owner && st->st_uid != geteuid()) err = EPERM;
  if (err == 0) return file;
  close(file);
  errno = err;
  return -1;
}

/* Unlink name only while it is a socket of this user. The name is looked up again by
 * unlinkat (there is no unlink by fd), but in a directory the caller verified nobody
 * else can replace it in between; a sticky one lets others only add names. */
static int remove_own_socket(int dirfd, const char *name) {
  struct stat st;
  int file = open_socket_file(dirfd, name, false, &st);
  if (file < 0) return -1;
  close(file);
  return unlinkat(dirfd, name, 0);
}

static int proc_path(char *buf, size_t size, int fd, const char *name) {
  int n = name ? snprintf(buf, size, "/proc/self/fd/%d/%s", fd, name) : snprintf(buf, size, "/proc/self/fd/%d", fd);
  if (n < 0 || (size_t)n >= size) {
    errno = ENAMETOOLONG;
    return -1;
  }
  return 0;
}

static napi_value unix_listen_at(napi_env env, napi_callback_info info) {
  ARGS(5);
  int dirfd, backlog, mode, stype;
  char name[256], type[16], chmod_path[32];
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  GET_INT(argv[0], "dirFd", &dirfd);
  GET_NAME(argv[1], dirfd, false, name);
  if (napi_get_value_string_utf8(env, argv[2], type, sizeof type, NULL) != napi_ok)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"type\" argument must be of type string");
  if (strcmp(type, "seqpacket") == 0) stype = SOCK_SEQPACKET;
  else if (strcmp(type, "stream") == 0) stype = SOCK_STREAM;
  else return type_error(env, "ERR_INVALID_ARG_VALUE", "The \"type\" argument must be 'seqpacket' or 'stream'");
  GET_INT(argv[3], "backlog", &backlog);
  GET_INT(argv[4], "mode", &mode);
  if (mode > 0777) return range_error(env, "The \"mode\" argument must be at most 0o777");
  if (proc_path(sa.sun_path, sizeof sa.sun_path, dirfd, name) < 0) return throw_errno(env, "bind", errno);

  int fd = socket(AF_UNIX, stype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  /* Linux creates the socket file with the socket inode's own mode minus the umask
   * (af_unix.c: S_IFSOCK | (SOCK_INODE(sock)->i_mode & ~current_umask())), so a
   * fchmod before bind means the file never exists with a wider mode, not even for a
   * moment. (BSDs refuse fchmod on a socket, hence the folklore that it cannot work.)
   * The umask (process-wide: not ours to change in a threaded process) can only clear
   * bits; when it did, the mode is set afterwards through an O_PATH fd on the file
   * itself, which cannot follow a link. bind never follows one: an existing name, a
   * symlink included, is EADDRINUSE. */
  const char *failed = fchmod(fd, (mode_t)mode) < 0 ? "fchmod"
                     : bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ? "bind" : NULL;
  if (failed) {
    close_all(&fd, 1);
    return throw_errno(env, failed, errno);
  }
  struct stat st;
  int file = open_socket_file(dirfd, name, false, &st);
  failed = file < 0 ? "openat"
         : (st.st_mode & 0777) != (mode_t)mode &&
           (proc_path(chmod_path, sizeof chmod_path, file, NULL) < 0 || chmod(chmod_path, (mode_t)mode) < 0) ? "chmod"
         : listen(fd, backlog) < 0 ? "listen" : NULL;
  int err = errno;
  if (file >= 0) close(file);
  if (failed) {
    remove_own_socket(dirfd, name);
    close(fd);
    return throw_errno(env, failed, err);
  }
  return num(env, fd);
}

/* Connect to the socket file name in dirFd, never through a symlink: ENOTSOCK for
 * anything that is not a socket file (a symlink included). */
static napi_value unix_connect_at(napi_env env, napi_callback_info info) {
  ARGS(2);
  int dirfd, r;
  char name[256];
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct stat st;
  GET_INT(argv[0], "dirFd", &dirfd);
  GET_NAME(argv[1], dirfd, false, name);
  int file = open_socket_file(dirfd, name, true, &st);
  if (file < 0) return throw_errno(env, "connect", errno);
  proc_path(sa.sun_path, sizeof sa.sun_path, file, NULL); /* "/proc/self/fd/" and an int always fit */
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    close_all(&file, 1);
    return throw_errno(env, "socket", errno);
  }
  do r = connect(fd, (struct sockaddr *)&sa, sizeof sa); while (r < 0 && errno == EINTR);
  int err = errno;
  close(file);
  if (r < 0) {
    close(fd);
    return throw_errno(env, "connect", err);
  }
  return num(env, fd);
}

/* Remove name if, and only if, it is a socket file of this user: true when removed,
 * false when nothing is there; ENOTSOCK or EPERM (another owner) leave it in place. */
static napi_value remove_socket_at(napi_env env, napi_callback_info info) {
  ARGS(2);
  int dirfd;
  char name[256];
  GET_INT(argv[0], "dirFd", &dirfd);
  GET_NAME(argv[1], dirfd, false, name);
  if (remove_own_socket(dirfd, name) == 0) return boolean(env, true);
  return errno == ENOENT ? boolean(env, false) : throw_errno(env, "unlinkat", errno);
}

/* ---- TCP listeners in a SO_REUSEPORT group (pool workers) -------------------
 * Node 20 ignores listen({ reusePort }), and the option must be set before bind:
 * the addon makes the whole listener, and the server adopts it with listen({ fd }).
 * Kept apart from the rest of the file, which only ever handles existing sockets. */

/* tcpListenReusePort(address, port, backlog, ipv6Only): a listening, non-blocking,
 * close-on-exec TCP socket with SO_REUSEADDR and SO_REUSEPORT. address is an IPv4
 * or IPv6 literal (checked in TS; EINVAL here otherwise). An IPv6 socket gets
 * IPV6_V6ONLY = ipv6Only, as Node's listen() does: '::' is dual-stack unless asked. */
static napi_value tcp_listen_reuseport(napi_env env, napi_callback_info info) {
  ARGS(4);
  char address[INET6_ADDRSTRLEN + 1];
  int port, backlog, one = 1;
  bool v6only;
  union { struct sockaddr sa; struct sockaddr_in in; struct sockaddr_in6 in6; } addr;
  socklen_t addrlen;
  if (napi_get_value_string_utf8(env, argv[0], address, sizeof address, NULL) != napi_ok)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"address\" argument must be of type string");
  GET_INT(argv[1], "port", &port);
  GET_INT(argv[2], "backlog", &backlog);
  if (napi_get_value_bool(env, argv[3], &v6only) != napi_ok)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"ipv6Only\" argument must be of type boolean");
  if (port > 65535) return range_error(env, "The \"port\" argument must be <= 65535");
  memset(&addr, 0, sizeof addr);
  if (inet_pton(AF_INET, address, &addr.in.sin_addr) == 1) {
    addr.in.sin_family = AF_INET;
    addr.in.sin_port = htons((uint16_t)port);
    addrlen = sizeof addr.in;
  } else if (inet_pton(AF_INET6, address, &addr.in6.sin6_addr) == 1) {
    addr.in6.sin6_family = AF_INET6;
    addr.in6.sin6_port = htons((uint16_t)port);
    addrlen = sizeof addr.in6;
  } else {
    return throw_errno(env, "bind", EINVAL);
  }
  int v6 = addr.sa.sa_family == AF_INET6 ? v6only : 0;
  int fd = socket(addr.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  const char *failed =
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ? "setsockopt"
    : setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ? "setsockopt"
    : addr.sa.sa_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6) < 0 ? "setsockopt"
    : bind(fd, &addr.sa, addrlen) < 0 ? "bind"
    : listen(fd, backlog) < 0 ? "listen" : NULL;
  if (failed) {
    close_all(&fd, 1);
    return throw_errno(env, failed, errno);
  }
  return num(env, fd);
}

/* ---- systemd: sd_notify and socket activation -------------------------------
 *
 * The service manager's notification protocol, as sd_notify(3) describes it: one
 * AF_UNIX SOCK_DGRAM datagram to $NOTIFY_SOCKET (a path, or an abstract name written
 * "@name"), optionally with fds as SCM_RIGHTS (FDSTORE=1). Written here rather than
 * linked from libsystemd, so the addon builds and loads where libsystemd is absent.
 */

/* NOTIFY_SOCKET "@name" is the abstract address "\0name": its length is significant, so
 * the address length counts exactly the name's bytes, never a trailing NUL, and it may fill
 * sun_path (108 bytes with the '@', as systemd allows); a path needs room for its NUL. */
static bool get_notify_address(napi_env env, napi_value v, struct sockaddr_un *sa, socklen_t *salen) {
  char text[sizeof sa->sun_path + 1];
  size_t len;
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"socketPath\" argument must be of type string"), false;
  if (len == 0 || len > sizeof sa->sun_path) return throw_errno(env, "sendmsg", len == 0 ? ENOENT : ENAMETOOLONG), false;
  napi_get_value_string_utf8(env, v, text, sizeof text, &len);
  if (text[0] != '@' && text[0] != '/') return throw_errno(env, "sendmsg", EINVAL), false; /* systemd sends nothing else */
  if (text[0] == '/' && len == sizeof sa->sun_path) return throw_errno(env, "sendmsg", ENAMETOOLONG), false;
  memcpy(sa->sun_path, text, len);
  if (text[0] == '@') sa->sun_path[0] = '\0';
  *salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (text[0] == '/' ? 1 : 0));
  return true;
}

/* sdNotify(socketPath, data, fds, timeoutMs): one datagram. The manager's receive queue holds
 * net.unix.max_dgram_qlen datagrams (10 by default, 512 under systemd's sysctl defaults); when it
 * is full, a send waits for room as libsystemd's does, but at most timeoutMs (SO_SNDTIMEO; 0 never
 * waits), after which EAGAIN is thrown: a READY=1 dropped at once would fail the service's start. */
static napi_value sd_notify_send(napi_env env, napi_callback_info info) {
  ARGS(4);
  struct sockaddr_un sa;
  socklen_t salen;
  int fds[MAX_FDS];
  void *data = NULL;
  size_t len = 0;
  bool is_buffer = false;
  uint32_t nfds = 0;
  int timeout_ms;
  if (!get_notify_address(env, argv[0], &sa, &salen)) return NULL;
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer)
    return type_error(env, "ERR_INVALID_ARG_TYPE", "The \"data\" argument must be a Buffer");
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  if (len == 0) return range_error(env, "A notification cannot be empty");
  if (!get_fds(env, argv[2], fds, &nfds)) return NULL;
  GET_INT(argv[3], "timeoutMs", &timeout_ms);

  struct iovec iov = { .iov_base = data, .iov_len = len };
  struct msghdr msg = { .msg_name = &sa, .msg_namelen = salen, .msg_iov = &iov, .msg_iovlen = 1 };
  control_buf ctl;
  attach_fds(&msg, &ctl, fds, nfds);
  struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  /* An SO_SNDTIMEO of 0 would mean waiting forever. */
  if (timeout_ms > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
    close_all(&fd, 1);
    return throw_errno(env, "setsockopt", errno);
  }
  ssize_t r;
  do r = sendmsg(fd, &msg, MSG_NOSIGNAL | (timeout_ms > 0 ? 0 : MSG_DONTWAIT)); while (r < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (r < 0) return throw_errno(env, "sendmsg", err);
  return NULL;
}

/* The fds systemd passes (LISTEN_FDS) are inherited across exec, so not close-on-exec:
 * sd_listen_fds(3) sets the flag, and so must we, or every child would inherit them. */
static napi_value set_cloexec(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd, flags;
  GET_INT(argv[0], "fd", &fd);
  if ((flags = fcntl(fd, F_GETFD)) < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) return throw_errno(env, "fcntl", errno);
  return NULL;
}

/* ---- module ------------------------------------------------------------------ */

NAPI_MODULE_INIT() {
#define FN(name, fn) { name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL }
  napi_property_descriptor props[] = {
    FN("unixListen", unix_listen), FN("unixConnect", unix_connect), FN("accept", accept_fd),
    FN("peerCredentials", peer_credentials), FN("sendMessage", send_message),
    FN("receiveMessage", receive_message), FN("poll", poll_fd), FN("dup", dup_fd),
    FN("close", close_fd), FN("growFdTable", grow_fd_table), FN("fdLimit", fd_limit),
    FN("socketInfo", socket_info), FN("inspectSockets", inspect_sockets), FN("openDirAt", open_dir_at), FN("statAt", stat_at),
    FN("readlinkAt", readlink_at), FN("unixListenAt", unix_listen_at), FN("unixConnectAt", unix_connect_at),
    FN("removeSocketAt", remove_socket_at), FN("threadCpuMs", thread_cpu_ms),
    /* TCP listeners in a SO_REUSEPORT group (pool workers) */
    FN("tcpListenReusePort", tcp_listen_reuseport),
    /* systemd */
    FN("sdNotify", sd_notify_send), FN("setCloseOnExec", set_cloexec),
  };
#undef FN
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
