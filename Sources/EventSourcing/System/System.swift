import Foundation

/// A process application: an application that follows other applications of a ``System``
/// (its leaders) and runs a ``ProcessPolicy`` on each of their events, saving its own events
/// together with its position in the leader's log (exactly once).
public struct ProcessApplication: Sendable {
    /// Its name in the system. Its position in each leader's log is the tracking record
    /// `"<name> <- <leader>"` in its own store: stored in plaintext, so no personal data.
    public let name: String
    /// Its own application; its recorder is a ``ProcessRecorder``.
    public let application: Application
    /// What it does with each upstream event.
    public let policy: any ProcessPolicy

    /// The longest member name, in bytes of UTF-8 (two names and `" <- "` make a tracking name).
    public static let maxNameBytes = 100

    /// Creates a process application.
    /// - Throws: `.invalidArgument` when `application.recorder` is not a ``ProcessRecorder``
    ///   (it could not commit events with a tracking record), or for a bad name
    ///   (``System/validate(name:)``).
    public init(name: String, application: Application, policy: some ProcessPolicy) throws(EventSourcingError) {
        try System.validate(name: name)
        guard application.recorder is any ProcessRecorder else {
            throw EventSourcingError(.invalidArgument,
                "process application \"\(name)\": its recorder (\(type(of: application.recorder))) is not a ProcessRecorder, so it cannot save events together with its tracking record")
        }
        self.name = name
        self.application = application
        self.policy = policy
    }

    /// The tracking name of this follower's position in `leader`'s log: `"<name> <- <leader>"`.
    public func trackingName(leader: String) -> String { System.trackingName(follower: name, leader: leader) }
}

/// Applications wired into pipes: in each pipe, each name leads the next, so a follower (a
/// ``ProcessApplication``) processes its leaders' events. Several levels (`orders → invoices →
/// reports`) and a follower with several leaders are allowed; cycles are not.
///
/// A system is a description; ``SystemRunner`` runs its followers.
public struct System: Sendable {
    /// A member of a system.
    public enum Member: Sendable {
        /// An application that only leads, under a name.
        case application(String, Application)
        /// A process application, which follows (and may lead).
        case process(ProcessApplication)

        /// The member's name.
        public var name: String {
            switch self {
            case .application(let name, _): return name
            case .process(let p): return p.name
            }
        }

        /// The member's application.
        public var application: Application {
            switch self {
            case .application(_, let app): return app
            case .process(let p): return p.application
            }
        }
    }

    /// The members, in the order given.
    public let members: [Member]
    private let byName: [String: Int]
    private let leadersByName: [String: [String]]
    private let followersByName: [String: [String]]

    /// Wires `members` by `pipes`: chains of names, each name leads the next
    /// (`[["orders", "invoices", "reports"], ["payments", "invoices"]]`: invoices follows
    /// orders and payments, reports follows invoices). A link given twice counts once.
    /// - Throws: `.invalidArgument`, before anything runs, naming what is wrong: a bad member
    ///   name (``validate(name:)``), two members with one name, two members on one recorder
    ///   object (one notification log: each application needs a store of its own; two store
    ///   objects over one database are not detected), a pipe of fewer than two names,
    ///   a name in a pipe that is no member, a follower that is not a process application, a
    ///   cycle (naming its members), a process application that follows nobody.
    public init(members: [Member], pipes: [[String]]) throws(EventSourcingError) {
        var byName: [String: Int] = [:]
        for (i, m) in members.enumerated() {
            try System.validate(name: m.name)
            if byName[m.name] != nil {
                throw EventSourcingError(.invalidArgument, "system: two members are named \"\(m.name)\"; member names must be unique")
            }
            byName[m.name] = i
        }
        // One log per member: a follower of an application whose recorder it writes to would
        // read its own events back (without end, if each makes another).
        for (i, m) in members.enumerated() {
            let recorder = m.application.recorder as AnyObject
            if let other = members[..<i].first(where: { ($0.application.recorder as AnyObject) === recorder }) {
                throw EventSourcingError(.invalidArgument,
                    "system: members \"\(other.name)\" and \"\(m.name)\" share one recorder, so one notification log; give each application a store of its own")
            }
        }
        var leaders: [String: [String]] = [:]
        var followers: [String: [String]] = [:]
        for (p, pipe) in pipes.enumerated() {
            guard pipe.count >= 2 else {
                throw EventSourcingError(.invalidArgument,
                    "system: pipe \(p + 1) has \(pipe.count) name\(pipe.count == 1 ? "" : "s"); a pipe names a leader and at least one follower")
            }
            for name in pipe where byName[name] == nil {
                let shown = (try? System.validate(name: name)) != nil ? "\"\(name)\"" : "a name of \(name.utf8.count) bytes"
                throw EventSourcingError(.invalidArgument, "system: pipe \(p + 1) names \(shown), which is no member of the system")
            }
            // Each name as its member spells it: Swift compares strings by canonical equivalence,
            // tracking names by their bytes, so a pipe's other spelling must not reach them.
            let pipe = pipe.compactMap { byName[$0].map { members[$0].name } }
            for (leader, follower) in zip(pipe, pipe.dropFirst()) {
                guard let f = byName[follower], case .process = members[f] else {
                    throw EventSourcingError(.invalidArgument,
                        "system: in pipe \(p + 1), \"\(follower)\" follows \"\(leader)\" but is not a process application (only a process application can follow)")
                }
                if leader == follower {
                    throw EventSourcingError(.invalidArgument, "system: the pipes form a cycle: \(leader) -> \(leader)")
                }
                if !(leaders[follower] ?? []).contains(leader) {
                    leaders[follower, default: []].append(leader)
                    followers[leader, default: []].append(follower)
                }
            }
        }
        if let cycle = System.cycle(in: members.map(\.name), followers: followers) {
            throw EventSourcingError(.invalidArgument, "system: the pipes form a cycle: " + cycle.joined(separator: " -> "))
        }
        for m in members {
            if case .process(let p) = m, leaders[p.name] == nil {
                throw EventSourcingError(.invalidArgument,
                    "system: process application \"\(p.name)\" follows nobody; put it in a pipe after its leader")
            }
        }
        self.members = members
        self.byName = byName
        self.leadersByName = leaders
        self.followersByName = followers
    }

    /// The members' names, in the order given.
    public var names: [String] { members.map(\.name) }
    /// The applications `name` follows, in the order the pipes name them (empty for a name
    /// that follows nobody or is no member).
    public func leaders(of name: String) -> [String] { leadersByName[name] ?? [] }
    /// The process applications that follow `name`, in the order the pipes name them.
    public func followers(of name: String) -> [String] { followersByName[name] ?? [] }
    /// The application of member `name`, nil for no member.
    public func application(_ name: String) -> Application? { byName[name].map { members[$0].application } }
    /// The process application named `name`, nil when `name` is no process application.
    public func processApplication(_ name: String) -> ProcessApplication? {
        guard let i = byName[name], case .process(let p) = members[i] else { return nil }
        return p
    }
    /// The process applications (the followers), in the order of the members.
    public var processApplications: [ProcessApplication] {
        members.compactMap { if case .process(let p) = $0 { return p } else { return nil } }
    }

    /// Checks a member name: 1 to ``ProcessApplication/maxNameBytes`` bytes of UTF-8, without
    /// NUL or `"<-"` (it is part of tracking names `"<follower> <- <leader>"`).
    /// - Throws: `.invalidArgument` saying what is wrong (a name too long or holding NUL is
    ///   described by its length, never quoted).
    public static func validate(name: String) throws(EventSourcingError) {
        let bytes = name.utf8.count
        guard bytes >= 1 else { throw EventSourcingError(.invalidArgument, "system: a member name must not be empty") }
        guard bytes <= ProcessApplication.maxNameBytes else {
            throw EventSourcingError(.invalidArgument,
                "system: a member name is at most \(ProcessApplication.maxNameBytes) bytes of UTF-8; one has \(bytes)")
        }
        guard !name.utf8.contains(0) else {
            throw EventSourcingError(.invalidArgument, "system: a member name must not contain NUL (one of \(bytes) bytes does)")
        }
        guard !name.contains("<-") else {
            throw EventSourcingError(.invalidArgument,
                "system: member name \"\(name)\" contains \"<-\", which separates the names in a tracking name")
        }
    }

    /// The tracking name of `follower`'s position in `leader`'s log.
    static func trackingName(follower: String, leader: String) -> String { "\(follower) <- \(leader)" }

    /// A cycle of the graph, as names with the first repeated at the end; nil when there is none.
    private static func cycle(in names: [String], followers: [String: [String]]) -> [String]? {
        // Iterative depth-first search (no recursion depth to run out of): 0 new, 1 on the path, 2 done.
        var mark: [String: Int] = [:]
        for start in names where mark[start] == nil {
            var path: [String] = [start]
            var next: [Int] = [0]
            mark[start] = 1
            while let node = path.last {
                let children = followers[node] ?? []
                let i = next[next.count - 1]
                if i < children.count {
                    next[next.count - 1] += 1
                    let child = children[i]
                    switch mark[child] {
                    case 1:
                        let from = path.firstIndex(of: child) ?? 0
                        return Array(path[from...]) + [child]
                    case nil:
                        mark[child] = 1
                        path.append(child)
                        next.append(0)
                    default:
                        break
                    }
                } else {
                    mark[node] = 2
                    path.removeLast()
                    next.removeLast()
                }
            }
        }
        return nil
    }
}
