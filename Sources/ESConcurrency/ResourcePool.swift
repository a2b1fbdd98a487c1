import Synchronization

/// Why ``ResourcePool/acquire()`` gave no resource.
package enum ResourcePoolError: Error, Sendable, Equatable {
    /// All `capacity` resources are in use and `maxWaiters` callers already wait for one.
    case overloaded(capacity: Int, maxWaiters: Int)
    /// The pool was closed.
    case closed
}

/// A bounded pool of reusable resources (cipher contexts, zlib streams, database connections).
///
/// The pool counts the resources it made that are alive (lent out or free), up to `capacity`:
/// - ``acquire()`` (async) never goes past it: with all of them lent out it suspends (no thread
///   is held) until one comes back, and at most `maxWaiters` callers wait; past that it throws
///   ``ResourcePoolError/overloaded(capacity:maxWaiters:)``. For resources that must be bounded
///   (database connections).
/// - ``take()`` (synchronous) never waits: past the capacity it makes a resource that is
///   dropped when it comes back. For resources borrowed only for the length of a synchronous
///   call (at most one per thread), where waiting would block a thread.
///
/// A resource given back is first passed to `reset`; one it refuses (a resource that may hold
/// stale state it could not clear) is dropped, and its place in the count freed.
// `public` rather than `package` (this target is no product, so it is not the library's API):
// in this toolchain the optimizer specializes an `@inlinable public` generic in a client module
// but not an `@inlinable package` one, and the unspecialized `take()`/`give(_:)` cost about 6%
// of an encrypted in-memory workload (generic metadata look-ups per record; W2 read CPU +22%).
public final class ResourcePool<Resource: Sendable, Failure: Error>: Sendable {
    @usableFromInline
    struct Waiter {
        @usableFromInline var id: UInt64
        @usableFromInline var continuation: CheckedContinuation<Resource, any Error>
    }

    @usableFromInline
    struct State: ~Copyable {
        @usableFromInline var free: [Resource] = []
        /// Resources made and not dropped, lent out or free.
        @usableFromInline var live = 0
        @usableFromInline var waiters: [Waiter] = []
        @usableFromInline var nextID: UInt64 = 0
        @usableFromInline var closed = false
        @usableFromInline init() {}
    }

    /// What a look at the state decided, acted on after the lock is released.
    private enum Step { case got(Resource), make, wait, refuse(any Error) }
    /// Where a resource given back went.
    @usableFromInline
    enum Next { case handed(CheckedContinuation<Resource, any Error>), kept, dropped }

    @usableFromInline let state = Mutex(State())
    /// The most resources alive at once through ``acquire()``, and the most kept free.
    public let capacity: Int
    /// The most callers that wait in ``acquire()`` at once.
    package let maxWaiters: Int
    @usableFromInline let make: @Sendable () throws(Failure) -> Resource
    @usableFromInline let reset: @Sendable (Resource) -> Bool
    @usableFromInline let drop: @Sendable (Resource) -> Void

    /// - Parameters:
    ///   - capacity: resources alive at once (at least 1).
    ///   - maxWaiters: callers of ``acquire()`` that may wait at once (0: none waits).
    ///   - make: makes a resource; called without the pool's lock held.
    ///   - reset: clears a resource given back; false drops it. Called without the lock held.
    ///   - drop: releases a resource the pool does not keep (closes a connection).
    public init(capacity: Int, maxWaiters: Int = 0,
                 make: @escaping @Sendable () throws(Failure) -> Resource,
                 reset: @escaping @Sendable (Resource) -> Bool = { _ in true },
                 drop: @escaping @Sendable (Resource) -> Void = { _ in }) {
        self.capacity = max(1, capacity)
        self.maxWaiters = max(0, maxWaiters)
        self.make = make
        self.reset = reset
        self.drop = drop
    }

    /// A free resource, or a new one; never waits (see the type's documentation).
    @inlinable
    public func take() throws(Failure) -> Resource {
        if let r = state.withLock({ s -> Resource? in
            if let r = s.free.popLast() { return r }
            s.live += 1
            return nil
        }) { return r }
        do {
            return try make()
        } catch {
            state.withLock { $0.live -= 1 }
            throw error
        }
    }

    /// A free resource, a new one while fewer than `capacity` are alive, or else the next one
    /// given back (waiting without holding a thread).
    /// - Throws: `Failure` from `make`; ``ResourcePoolError`` when overloaded or closed;
    ///   `CancellationError` when the task is cancelled while it waits (or before).
    package func acquire() async throws -> Resource {
        let step = state.withLock { s -> Step in
            if s.closed { return .refuse(ResourcePoolError.closed) }
            if let r = s.free.popLast() { return .got(r) }
            if s.live < capacity {
                s.live += 1
                return .make
            }
            if s.waiters.count >= maxWaiters { return .refuse(ResourcePoolError.overloaded(capacity: capacity, maxWaiters: maxWaiters)) }
            return .wait
        }
        switch step {
        case .got(let r): return r
        case .refuse(let e): throw e
        case .make:
            do {
                return try make()
            } catch {
                release()
                throw error
            }
        case .wait:
            return try await wait()
        }
    }

    private func wait() async throws -> Resource {
        let id = state.withLock { s -> UInt64 in
            s.nextID &+= 1
            return s.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Resource, any Error>) in
                let now = state.withLock { s -> Step in
                    // Whatever changed since the first look is looked at again under the lock.
                    if s.closed { return .refuse(ResourcePoolError.closed) }
                    if Task.isCancelled { return .refuse(CancellationError()) }
                    if let r = s.free.popLast() { return .got(r) }
                    if s.live < capacity {
                        s.live += 1
                        return .make
                    }
                    if s.waiters.count >= maxWaiters {
                        return .refuse(ResourcePoolError.overloaded(capacity: capacity, maxWaiters: maxWaiters))
                    }
                    s.waiters.append(Waiter(id: id, continuation: c))
                    return .wait
                }
                switch now {
                case .wait: break
                case .got(let r): c.resume(returning: r)
                case .refuse(let e): c.resume(throwing: e)
                case .make:
                    do {
                        c.resume(returning: try make())
                    } catch {
                        release()
                        c.resume(throwing: error)
                    }
                }
            }
        } onCancel: {
            let waiter = state.withLock { s -> Waiter? in
                guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiters.remove(at: i)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Gives back a resource from ``take()`` or ``acquire()``: to the first waiter, else kept
    /// free (up to `capacity`), else dropped.
    @inlinable
    public func give(_ resource: Resource) {
        guard reset(resource) else {
            drop(resource)
            release()
            return
        }
        let next = state.withLock { s -> Next in
            if !s.closed, !s.waiters.isEmpty { return .handed(s.waiters.removeFirst().continuation) }
            if !s.closed, s.live <= capacity, s.free.count < capacity {
                s.free.append(resource)
                return .kept
            }
            s.live -= 1
            return .dropped
        }
        switch next {
        case .handed(let c): c.resume(returning: resource)
        case .kept: break
        case .dropped: drop(resource)
        }
    }

    /// Frees the place of a resource that was lent out and is gone (dropped, or never made):
    /// a waiter may now make one.
    @usableFromInline
    func release() {
        let waiter = state.withLock { s -> Waiter? in
            s.live -= 1
            guard !s.closed, !s.waiters.isEmpty else { return nil }
            s.live += 1
            return s.waiters.removeFirst()
        }
        guard let waiter else { return }
        do {
            waiter.continuation.resume(returning: try make())
        } catch {
            release()
            waiter.continuation.resume(throwing: error)
        }
    }

    /// Resources alive (lent out or free); for tests and statistics.
    package var liveCount: Int { state.withLock { $0.live } }
    /// Callers waiting in ``acquire()``.
    package var waiterCount: Int { state.withLock { $0.waiters.count } }

    /// Closes the pool: waiters get ``ResourcePoolError/closed``, free resources are dropped,
    /// and resources lent out are dropped when given back. Later ``acquire()`` calls fail;
    /// ``take()`` still works (its resources are dropped on return).
    package func close() {
        let (free, waiters) = state.withLock { s -> ([Resource], [Waiter]) in
            s.closed = true
            let f = s.free, w = s.waiters
            s.live -= f.count
            s.free = []
            s.waiters = []
            return (f, w)
        }
        for w in waiters { w.continuation.resume(throwing: ResourcePoolError.closed) }
        for r in free { drop(r) }
    }
}
