import Foundation

/// Checks on a read model's SQL shared by the stores' view transactions.
package enum ViewSQL {
    /// The statement's first keyword, uppercased, after white space, `;` and comments.
    package static func firstKeyword(_ sql: String) -> String {
        keywords(sql, count: 1).first ?? ""
    }

    /// The statement's first `count` keywords (words of letters), uppercased, after white space,
    /// `;` and comments.
    package static func keywords(_ sql: String, count: Int) -> [String] {
        var rest = Substring(sql)
        var out: [String] = []
        while out.count < count {
            rest = rest.drop { $0.isWhitespace || $0 == ";" }
            if rest.hasPrefix("--") {
                rest = rest.drop { $0 != "\n" }
            } else if rest.hasPrefix("/*") {
                guard let end = rest.range(of: "*/") else { return out }
                rest = rest[end.upperBound...]
            } else {
                let word = rest.prefix { $0.isLetter }
                guard !word.isEmpty else { return out }
                out.append(word.uppercased())
                rest = rest.dropFirst(word.count)
            }
        }
        return out
    }
}
