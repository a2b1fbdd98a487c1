import Foundation

/// A process application: an application that follows other applications (its leaders) and
/// runs a policy on each of their events.
public struct ProcessApplication: Sendable {
    /// Its name in the system (also the start of its tracking names).
    public let name: String
    /// Its own application; its recorder must be a ``ProcessRecorder``.
    public let application: Application
    /// What it does with each upstream event.
    public let policy: any ProcessPolicy

    /// Throws .invalidArgument when application.recorder is not a ProcessRecorder, or a bad name
    /// (1...100 bytes UTF-8, no NUL, no "<-").
    public init(name: String, application: Application, policy: some ProcessPolicy) throws(EventSourcingError) {
        self.name = name
        self.application = application
        self.policy = policy
    }
}

/// Applications wired into pipes: each name of a pipe leads the next.
public struct System: Sendable {
    /// A member of a system.
    public enum Member: Sendable {
        /// An application that only leads.
        case application(String, Application)
        /// A process application, which follows.
        case process(ProcessApplication)
    }

    /// pipes: chains of names, each name leads the next.
    public init(members: [Member], pipes: [[String]]) throws(EventSourcingError) {
        fatalError("unimplemented")
    }

    /// The members' names, in the order given.
    public var names: [String] { fatalError("unimplemented") }
    /// The applications `name` follows.
    public func leaders(of name: String) -> [String] { fatalError("unimplemented") }
    /// The process applications that follow `name`.
    public func followers(of name: String) -> [String] { fatalError("unimplemented") }
    /// The application of member `name`.
    public func application(_ name: String) -> Application? { fatalError("unimplemented") }
}
