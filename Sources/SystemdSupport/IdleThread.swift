import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One thread at idle CPU priority (`SCHED_IDLE`: it runs only when nothing else wants the core) and idle I/O
/// priority (`IOPRIO_CLASS_IDLE`), running the jobs given to it one after another: the daemon's background
/// model builds, which must never take a core from transcription. A dedicated thread, not a Dispatch queue,
/// because the priority belongs to the thread and Dispatch's pool threads run everyone's work.
public final class IdleThread: @unchecked Sendable {  // @unchecked: `jobs` guarded by `condition`
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var finishing = false
    /// What the thread got (false where the kernel refused, e.g. in a container without the permission).
    public private(set) var idleCPU = false
    public private(set) var idleIO = false

    /// Starts the thread, named `name` (seen in `top -H`, `ps -L`).
    public init(name: String) {
        let started = DispatchSemaphore(value: 0)
        let thread = Thread { [self] in
            _ = myqasr_set_thread_name(String(name.utf8.prefix(15))!)
            var parameters = sched_param(sched_priority: 0)
            let cpu = sched_setscheduler(0, SCHED_IDLE, &parameters) == 0
            let io = myqasr_ioprio_set_self(3 << 13) == 0   // class 3 (idle) << IOPRIO_CLASS_SHIFT
            condition.lock()
            (idleCPU, idleIO) = (cpu, io)
            condition.unlock()
            started.signal()
            run()
        }
        thread.name = name
        thread.start()
        started.wait()
    }

    /// Queues `job`; it runs after the jobs queued before it.
    public func async(_ job: @escaping () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// The thread ends once the jobs queued so far have run.
    public func finish() {
        condition.lock()
        finishing = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !finishing { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }

    /// The calling thread's scheduling policy and I/O priority class (for tests): `(SCHED_IDLE?, I/O idle?)`.
    public static func currentThreadIsIdle() -> (cpu: Bool, io: Bool) {
        (sched_getscheduler(0) == SCHED_IDLE, myqasr_ioprio_get_self() >> 13 == 3)
    }
}
