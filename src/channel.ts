/**
 * One connected end of the takeover channel: a non-blocking SOCK_SEQPACKET fd that carries
 * frames (see protocol.ts) with file descriptors attached. Read and written only through the
 * addon, never through net.Socket, which would silently close arriving fds.
 */
import { EventEmitter } from 'node:events';
import * as native from './native.js';
import { decodeFrame, encode, MAX_FRAME_SIZE, type Frame, type Message } from './protocol.js';
import { ErrorCodes, TakeoverError, systemError } from './errors.js';

export interface ChannelEvents {
  frame: [frame: Frame];
  /** The socket can take more after a {@link Channel.trySend} returned false. */
  writable: [];
  /** Fatal: a system error, or a frame that failed validation. The channel is closed. */
  error: [error: TakeoverError];
  /** The peer closed its end, or {@link Channel.close} was called. Emitted once. */
  close: [];
}

export class Channel extends EventEmitter<ChannelEvents> {
  readonly peer: native.PeerCredentials;
  private readonly fd: number;
  private readonly poller: native.Poller;
  private readonly queue: Message[] = [];
  private wantWritable = false;
  private closeAfterFlush = false;
  private lingering = false;
  private lingerMs = 0;
  private lingerTimer: NodeJS.Timeout | undefined;
  /** {@link keepQueued} was called: the linger does not end while frames wait. */
  private keepingQueued = false;
  /** {@link readToEnd} was called: frames still arrive after this side's last word, until the peer closes. */
  private readingToEnd = false;
  private peerReset = false;
  /** Inside readAll(): a frame's handler that calls readQueued() must not read the next frame under itself. */
  private reading = false;
  /** {@link yieldReading} was called from a frame's handler: a read driven by the poller stops after that frame. */
  private yielding = false;
  /** A send failed: later frames are dropped until the failure is reported. */
  private sendError: TakeoverError | undefined;
  private closed = false;
  /** See {@link markListening}: set once this side accepts on the listeners it was passed. */
  private readsOnMs: number | undefined;
  /** When a read last found nothing queued: every frame read since arrived after it. */
  private drainedAt = performance.now();

  /** Takes ownership of `fd`: the channel closes it. */
  constructor(fd: number) {
    super();
    this.fd = fd;
    try {
      this.peer = native.peerCredentials(fd);
      this.poller = native.poll(fd, (status, readable, writable) => this.onPoll(status, readable, writable));
    } catch (error) {
      native.close(fd);
      throw systemError('takeover channel', error);
    }
    this.poller.start(true, false);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Frames wait behind a full socket ('writable' follows once they are out). */
  get hasQueued(): boolean {
    return this.queue.length > 0;
  }

  /** Closed, or a send failed and the failure is about to be reported: nothing sent now arrives. */
  get isBroken(): boolean {
    return this.closed || this.sendError !== undefined;
  }

  /**
   * Queues a frame behind any frame not yet sent. The fds must stay open until the frame is
   * on the wire (the kernel then holds its own references); use {@link trySend} for fds
   * that could be closed meanwhile.
   */
  send(message: Message): void {
    // After sendLast() the peer is told this side gave up: nothing may follow the ABORT.
    if (this.closed || this.lingering) return;
    if (this.queue.length === 0 && this.sendNow(message)) return;
    this.queue.push(message);
    this.watchWritable(true);
  }

  /** Sends at once or not at all: false when the socket is full or earlier frames wait. */
  trySend(message: Message): boolean {
    if (this.closed || this.lingering) return false;
    if (this.queue.length > 0) return false;
    if (this.sendNow(message)) return true;
    this.watchWritable(true);
    return false;
  }

  /**
   * Sends a last frame (an ABORT) and closes once the peer has read it. Closing at once could
   * lose it: a Unix socket closed with unread data resets its peer (ECONNRESET) instead.
   * Later frames are dropped; the channel closes on the peer's EOF or after `lingerMs`.
   */
  sendLast(message: Message, lingerMs = 1000): void {
    if (this.closed || this.lingering) return;
    this.send(message);
    this.lingering = true;
    this.lingerMs = lingerMs;
    this.lingerTimer = setTimeout(() => {
      if (!this.keepingQueued || this.queue.length === 0) this.destroy();
    }, lingerMs).unref();
  }

  /**
   * This side's ABORT from now on says it accepts on the listeners it was passed (a successor past
   * LISTENING), and that it reads on for `readsOnMs` after it, refusing to be taken over meanwhile.
   */
  markListening(readsOnMs: number): void {
    this.readsOnMs = readsOnMs;
  }

  /** Tells the peer this side gives up, as its last frame (see {@link sendLast}). */
  sendAbort(reason: TakeoverError): void {
    this.sendLast(encode.abort(reason.code, reason.message, this.readsOnMs !== undefined, this.readsOnMs));
  }

  /** How long ago a read last found the channel empty: a frame read now was sent no earlier. */
  get msSinceDrained(): number {
    return performance.now() - this.drainedAt;
  }

  /**
   * The frames still queued behind a full socket (after a {@link sendLast}, the ABORT last) are
   * sent all the same, for as long as the peer lives, when they carry what only the peer has now;
   * then the channel closes: `lingerMs` after the last one left after a sendLast, at once
   * otherwise, or when the peer goes. False (and nothing changes) when nothing waits.
   */
  keepQueued(): boolean {
    if (this.closed || this.queue.length === 0) return false;
    if (this.lingering) this.keepingQueued = true;
    else this.closeAfterFlush = true;
    return true;
  }

  /**
   * For a side that gave up but must still take what the peer sends until the peer closes its end
   * (a successor after LISTENING: a wave the old process sent before it read the ABORT is released
   * there, and only this side can start it). Nothing more is queued (what is queued still goes);
   * frames keep arriving, after a {@link sendLast} too, whose linger no longer closes the channel:
   * the peer's EOF or {@link close} does.
   */
  readToEnd(): void {
    if (this.closed) return;
    this.lingering = true;
    this.readingToEnd = true;
    clearTimeout(this.lingerTimer);
  }

  /** Closes once every queued frame is on the wire (the last frames of a takeover). */
  closeWhenFlushed(): void {
    if (this.queue.length === 0) this.destroy();
    else this.closeAfterFlush = true;
  }

  /** Closes now, unless a {@link sendLast} is still lingering (it closes by itself) without a {@link readToEnd}. */
  close(): void {
    if (this.lingering && !this.readingToEnd) return;
    this.destroy();
  }

  private destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.poller.close();
    native.close(this.fd);
    this.emit('close');
  }

  private sendNow(message: Message): boolean {
    if (this.sendError) return true;
    try {
      return native.sendMessage(this.fd, message.data, message.fds);
    } catch (error) {
      if (this.sendError) return true;
      const code = (error as { code?: string }).code;
      this.sendError =
        code === 'EPIPE' || code === 'ECONNRESET'
          ? new TakeoverError(ErrorCodes.PEER_CLOSED, 'the other side closed the takeover channel', { cause: error })
          : systemError('takeover channel send', error);
      // Not now, from inside a caller's send: first read what the peer sent before it went
      // away (its ABORT says why), then fail.
      setImmediate(() => {
        this.readAll();
        this.fail(this.sendError!);
      });
      return true;
    }
  }

  private watchWritable(on: boolean): void {
    if (this.wantWritable === on || this.closed) return;
    this.wantWritable = on;
    this.poller.start(true, on);
  }

  private onPoll(status: number, readable: boolean, writable: boolean): void {
    if (this.closed) return;
    if (status < 0) {
      // libuv reports POLLERR (e.g. the peer closed with our frames unread) without reading:
      // frames it sent before closing, such as its ABORT, are still queued and come first.
      this.readAll();
      this.fail(new TakeoverError(ErrorCodes.PEER_CLOSED, `takeover channel poll failed (${status})`));
      return;
    }
    if (writable) this.flush();
    if (readable) this.readAll(true);
  }

  private flush(): void {
    while (this.queue.length > 0 && !this.closed) {
      if (!this.sendNow(this.queue[0]!)) return;
      this.queue.shift();
    }
    this.watchWritable(false);
    if (this.closeAfterFlush) this.destroy();
    else if (this.keepingQueued) setTimeout(() => this.destroy(), this.lingerMs).unref();
    else if (!this.closed) this.emit('writable');
  }

  /**
   * Reads, now, every frame the peer has queued. For a side about to act on its own (on a timer,
   * on a loop turn) rather than on a frame: what the peer said meanwhile comes first. An
   * immediate or a timer runs before the loop polls the channel, so a process that was stopped
   * would otherwise act before reading the ABORT that waited for it.
   */
  readQueued(): void {
    if (!this.reading) this.readAll();
  }

  /**
   * From a frame's handler: the frames after it are read on a later turn of the event loop (the
   * poller is level-triggered, so it calls again), and the loop serves its other I/O in between.
   * A successor starting waves back to back would otherwise serve none of the connections it
   * adopted for as long as the predecessor keeps sending. Reads that must see everything the peer
   * sent before this side acts or fails ({@link readQueued}, a failure) do not stop.
   */
  yieldReading(): void {
    this.yielding = true;
  }

  private readAll(yieldable = false): void {
    this.reading = true;
    try {
      this.readEach(yieldable);
    } finally {
      this.reading = false;
      this.yielding = false;
    }
  }

  private readEach(yieldable: boolean): void {
    while (!this.closed) {
      let message: native.ReceivedMessage | null;
      try {
        message = native.receiveMessage(this.fd, MAX_FRAME_SIZE);
      } catch (error) {
        const code = (error as { code?: string }).code;
        // A peer that closed with our frames unread leaves ECONNRESET pending, and the kernel
        // reports it once, before the frames the peer sent first (its ABORT, say): read on.
        if (code === 'ECONNRESET' && !this.peerReset) {
          this.peerReset = true;
          continue;
        }
        // The peer is still there and sent something this side cannot take: tell it why.
        if (code === 'ERR_FDS_TRUNCATED') {
          return this.refuse(
            new TakeoverError(ErrorCodes.FD_LIMIT, 'file descriptors were lost in transit (MSG_CTRUNC): fd limit reached', {
              cause: error,
            }),
          );
        }
        if (code === 'ERR_MESSAGE_TRUNCATED') {
          return this.refuse(
            new TakeoverError(ErrorCodes.PROTOCOL, `a channel frame larger than the protocol allows (${MAX_FRAME_SIZE} bytes)`, {
              cause: error,
            }),
          );
        }
        if (code === 'ERR_EMPTY_MESSAGE') {
          return this.refuse(new TakeoverError(ErrorCodes.PROTOCOL, 'a zero-length message on the takeover channel', { cause: error }));
        }
        this.fail(
          code === 'ECONNRESET'
            ? new TakeoverError(ErrorCodes.PEER_CLOSED, 'the other side closed the takeover channel abruptly', { cause: error })
            : systemError('takeover channel receive', error),
        );
        return;
      }
      if (message === null) {
        this.drainedAt = performance.now();
        if (this.peerReset) this.fail(new TakeoverError(ErrorCodes.PEER_CLOSED, 'the other side closed the takeover channel abruptly'));
        return;
      }
      if (message.data.length === 0 && message.fds.length === 0) {
        this.destroy();
        return;
      }
      if (this.lingering && !this.readingToEnd) {
        for (const fd of message.fds) native.close(fd);
        continue;
      }
      let frame: Frame;
      try {
        frame = decodeFrame(message.data, message.fds);
      } catch (error) {
        for (const fd of message.fds) native.close(fd);
        return this.refuse(error instanceof TakeoverError ? error : systemError('decode', error));
      }
      this.emit('frame', frame);
      if (this.yielding && yieldable) return;
    }
  }

  /** Tells the peer why before closing: a bad frame is the peer's bug to fix. */
  private refuse(reason: TakeoverError): void {
    // Reading to the end: the peer's later frames may still be good; this one is dropped.
    if (this.readingToEnd) return;
    // Already closing with a last word (its own ABORT, or an earlier refusal): nothing to add.
    if (this.lingering) return this.destroy();
    this.sendAbort(reason);
    this.emit('error', reason);
  }

  private fail(error: TakeoverError): void {
    if (this.closed) return;
    if (this.lingering) return this.destroy();
    this.emit('error', error);
    this.destroy();
  }
}
