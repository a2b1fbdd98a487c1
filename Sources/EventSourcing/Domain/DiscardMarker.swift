import Foundation

extension Aggregate {
    /// The reserved topic of this type's discard marker (``AggregateRoot/discard(at:)``):
    /// `"\(typeName)#discarded"`. No event topic may end with ``DiscardMarker/topicSuffix``.
    /// A projection or process application that wants to learn of discards lists this topic
    /// (or follows every topic) and checks ``LogItem/isDiscardMarker``.
    public static var discardTopic: String { typeName + DiscardMarker.topicSuffix }
}

/// The record ``AggregateRoot/discard(at:)`` leaves: stored like the aggregate's next event, at
/// the version after its last event, under the topic ``Aggregate/discardTopic``, sealed (when the
/// application encrypts) under the aggregate's key scope like its events, so its originator id,
/// version and topic are authenticated. Its payload, in the record's payload encoding (compact or
/// JSON), is the envelope `{"v":1,"t":<seconds since 1970>}`: the marker's schema version and
/// when the aggregate was discarded. It holds nothing else.
public enum DiscardMarker {
    /// The suffix every discard topic ends with, reserved: no event topic may end with it.
    public static let topicSuffix = "#discarded"
    /// The schema version of the marker's payload.
    static let schemaVersion = 1

    /// Whether `topic` is a discard marker's (some type's ``Aggregate/discardTopic``).
    public static func isDiscard(topic: String) -> Bool { topic.utf8.count > topicSuffix.utf8.count && topic.hasSuffix(topicSuffix) }

    /// The marker's payload.
    struct Envelope: Codable {
        var v: Int
        var t: Double
    }
}
