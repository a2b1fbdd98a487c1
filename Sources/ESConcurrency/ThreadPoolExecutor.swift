import Dispatch
import Foundation
import Synchronization

/// A task executor that runs jobs on threads of its own, for work that blocks a thread (a C
/// database library's calls, file I/O) and so must stay off Swift's cooperative pool.
///
/// At most `maxThreads` threads run; a thread starts when a job finds none idle, and exits after
/// `idleTimeout` without work, so an executor nobody uses holds no thread (a store that is never
/// closed leaks none). A thread sleeps as soon as it finds no job (spinning for the next one was
/// tried: on a loaded 2-core machine it cost more than the wake-ups it saved).
///
/// Code can test whether it runs on one of the executor's threads (``isCurrent``) and then do
/// its blocking work inline, without a hop.
public final class ThreadPoolExecutor: TaskExecutor, Sendable {
    struct State: ~Copyable {
        var jobs: [Job] = []
        var head = 0
        /// Threads running (busy or sleeping).
        var threads = 0
        /// Threads sleeping on `wake`.
        var sleeping = 0
        /// Wake-ups signalled and not consumed yet.
        var signalled = 0
        var stopped = false

        var isEmpty: Bool { head == jobs.count }

        mutating func take() -> Job? {
            guard head < jobs.count else { return nil }
            let job = jobs[head]
            head += 1
            if head == jobs.count {
                jobs.removeAll(keepingCapacity: jobs.count <= 1024)
                head = 0
            } else if head >= 1024, head * 2 >= jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            return job
        }
    }

    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)
    private let identity: Identity
    /// The most threads that run at once.
    public let maxThreads: Int
    private let name: String
    private let idleMillis: Int

    /// An executor of at most `maxThreads` (at least 1) threads named `name`; a thread exits
    /// after `idleTimeout` asleep.
    public init(name: String, maxThreads: Int, idleTimeout: Duration = .seconds(2)) {
        self.name = name
        self.maxThreads = max(1, maxThreads)
        self.idleMillis = max(1, Int(idleTimeout.components.seconds) * 1000
                                 + Int(idleTimeout.components.attoseconds / 1_000_000_000_000_000))
        self.identity = Identity()
    }

    /// Whether the calling thread is one of this executor's.
    public var isCurrent: Bool {
        guard let mark = pthread_getspecific(Self.threadKey) else { return false }
        return mark == Unmanaged.passUnretained(identity).toOpaque()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        submit(.task(UnownedJob(job)))
    }

    /// Runs `work` on one of the executor's threads (a blocking call that is not a task's job).
    public func execute(_ work: @escaping @Sendable () -> Void) {
        submit(.work(work))
    }

    /// A task's job, or plain work.
    enum Job {
        case task(UnownedJob)
        case work(@Sendable () -> Void)

        func run(on executor: UnownedTaskExecutor) {
            switch self {
            case .task(let job): job.runSynchronously(on: executor)
            case .work(let work): work()
            }
        }
    }

    private func submit(_ job: Job) {
        enum Action { case none, signal, spawn }
        let action = state.withLock { s -> Action in
            s.jobs.append(job)
            // No thread at all (idle, or after shutdown): start one, whatever the counts say.
            if s.threads == 0 {
                s.threads = 1
                return .spawn
            }
            let pending = s.jobs.count - s.head
            // A thread already woken takes the job; otherwise a sleeping one is woken, or a new one started.
            if pending <= s.signalled { return .none }
            if s.sleeping > s.signalled {
                s.signalled += 1
                return .signal
            }
            // Also after shutdown: a task that still prefers this executor must not hang.
            if s.threads < maxThreads {
                s.threads += 1
                return .spawn
            }
            return .none   // every thread is busy: the next one free takes it
        }
        switch action {
        case .none: break
        case .signal: wake.signal()
        case .spawn: spawn()
        }
    }

    /// Threads running now (for tests).
    package var threadCount: Int { state.withLock { $0.threads } }

    /// Lets the threads finish: those sleeping exit now, the others once the jobs queued are run.
    /// A job enqueued later still runs (on a thread started for it, which exits when idle).
    public func shutdown() {
        let sleepers = state.withLock { s -> Int in
            s.stopped = true
            let n = s.sleeping - s.signalled
            s.signalled = s.sleeping
            return max(0, n)
        }
        for _ in 0..<sleepers { wake.signal() }
    }

    private func spawn() {
        let thread = Thread { [self] in
            pthread_setspecific(ThreadPoolExecutor.threadKey, Unmanaged.passUnretained(identity).toOpaque())
            run()
        }
        thread.name = name
        thread.start()
    }

    private func run() {
        let executor = asUnownedTaskExecutor()
        while true {
            if let job = state.withLock({ $0.take() }) {
                job.run(on: executor)
                continue
            }
            // Sleep until woken, or exit after the idle timeout (or once stopped).
            let sleep = state.withLock { s -> Bool? in
                if s.stopped, s.isEmpty {
                    s.threads -= 1
                    return nil
                }
                if !s.isEmpty { return false }
                s.sleeping += 1
                return true
            }
            guard let sleep else { return }
            guard sleep else { continue }
            let woken = wake.wait(timeout: .now() + .milliseconds(idleMillis))
            let exit = state.withLock { s -> Bool in
                s.sleeping -= 1
                if woken == .success {
                    s.signalled -= 1
                    return false
                }
                // Timed out: exit unless work came meanwhile (a signal may still be on its way:
                // then another sleeper, or the next thread, consumes it).
                if s.isEmpty || s.stopped {
                    s.threads -= 1
                    return true
                }
                return false
            }
            if exit { return }
        }
    }

    /// An object whose address marks this executor's threads (in ``threadKey``).
    private final class Identity: Sendable {}

    /// The thread-specific slot that holds the executor identity of a pool thread.
    private static let threadKey: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()
}
