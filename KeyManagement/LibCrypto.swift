import COpenSSL
import ESConcurrency
import Synchronization

/// The one place in KeyManagement that calls OpenSSL's libcrypto.
///
/// Every `Unsafe*` pointer and every C call stays inside this type; callers see
/// `[UInt8]` and ``KeyMaterial`` only.
enum LibCrypto {
    /// `count` as the C `int` that OpenSSL takes for a length.
    ///
    /// Every length handed to OpenSSL goes through here: `Int32(count)` would trap above
    /// 2^31 − 1, and OpenSSL's own `size_t` entry points (scrypt) narrow to `int` inside.
    /// - Throws: ``KeyManagementError/Code/limitExceeded`` for a negative count or one above `Int32.max`,
    ///   naming `what` (never its contents).
    static func cLength(_ count: Int, of what: String) throws(KeyManagementError) -> Int32 {
        guard let n = Int32(exactly: count), n >= 0 else {
            throw KeyManagementError(.limitExceeded,
                                     "\(what) is \(count) bytes; OpenSSL takes 0–\(Int32.max) bytes in one call")
        }
        return n
    }

    /// Fills a new array with `count` bytes from OpenSSL's CSPRNG (`RAND_bytes`).
    static func randomBytes(_ count: Int) throws(KeyManagementError) -> [UInt8] {
        let n = try cLength(count, of: "the random byte count")
        var out = [UInt8](repeating: 0, count: count)
        guard count > 0 else { return out }
        let rc = out.withUnsafeMutableBytes { buf in
            RAND_bytes(buf.baseAddress?.assumingMemoryBound(to: UInt8.self), n)
        }
        guard rc == 1 else { throw KeyManagementError(.cryptoFailure, "RAND_bytes failed") }
        return out
    }

    /// Fills caller-owned raw memory with random bytes.
    static func randomFill(_ buffer: UnsafeMutableRawBufferPointer) throws(KeyManagementError) {
        let n = try cLength(buffer.count, of: "the random byte count")
        guard let base = buffer.baseAddress, n > 0 else { return }
        guard RAND_bytes(base.assumingMemoryBound(to: UInt8.self), n) == 1 else {
            throw KeyManagementError(.cryptoFailure, "RAND_bytes failed")
        }
    }

    /// Overwrites memory with zeros in a way the optimiser may not remove.
    static func cleanse(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        OPENSSL_cleanse(base, buffer.count)
    }

    static func cleanse(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { cleanse($0) }
    }

    /// SHA-256 of `data`.
    static func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 32
        let ok = data.withUnsafeBytes { input in
            out.withUnsafeMutableBytes { output in
                EVP_Digest(input.baseAddress, input.count,
                           output.baseAddress?.assumingMemoryBound(to: UInt8.self), &len,
                           EVP_sha256(), nil)
            }
        }
        // EVP_Digest with a built-in digest only fails on allocation failure.
        return ok == 1 ? out : []
    }

    /// scrypt (RFC 7914) through `EVP_PBE_scrypt`.
    ///
    /// Callers check the cost first (``KDFParameters/validate()``); OpenSSL's 1 GiB memory
    /// ceiling here is only a backstop.
    static func scrypt(password: [UInt8], salt: [UInt8], n: UInt64, r: UInt64, p: UInt64,
                       into output: UnsafeMutableRawBufferPointer) throws(KeyManagementError) {
        // OpenSSL takes these as size_t but hands them to PBKDF2 as int.
        _ = try cLength(password.count, of: "the passphrase")
        _ = try cLength(salt.count, of: "the scrypt salt")
        _ = try cLength(output.count, of: "the scrypt output")
        let maxMem: UInt64 = 1 << 30
        let rc = password.withUnsafeBytes { pw in
            salt.withUnsafeBytes { s in
                EVP_PBE_scrypt(pw.baseAddress?.assumingMemoryBound(to: CChar.self), pw.count,
                               s.baseAddress?.assumingMemoryBound(to: UInt8.self), s.count,
                               n, r, p, maxMem,
                               output.baseAddress?.assumingMemoryBound(to: UInt8.self), output.count)
            }
        }
        guard rc == 1 else {
            throw KeyManagementError(.invalidKeyMaterial, "scrypt failed (invalid parameters: n must be a power of two > 1)")
        }
    }

    // MARK: AES-256-GCM

    static let gcmNonceLength = 12
    static let gcmTagLength = 16

    /// AES-256-GCM fetched from the default provider once. Passing the legacy `EVP_aes_256_gcm()`
    /// to every init makes OpenSSL 3 look the implementation up again on each record.
    static let aes256GCM = FetchedCipher()

    /// Encrypts `plaintext`, returning `ciphertext || tag`.
    static func aes256GCMSeal(key: UnsafeRawBufferPointer, nonce: [UInt8], aad: [UInt8],
                              plaintext: [UInt8]) throws(KeyManagementError) -> [UInt8] {
        try aes256GCMSeal(key: key, nonce: nonce, aadParts: [aad], plaintext: plaintext, prefix: [])
    }

    /// Encrypts `plaintext` with the concatenation of `aadParts` as associated data and
    /// returns `prefix || ciphertext || tag` in one allocation.
    static func aes256GCMSeal(key: UnsafeRawBufferPointer, nonce: [UInt8], aadParts: [[UInt8]],
                              plaintext: [UInt8], prefix: [UInt8]) throws(KeyManagementError) -> [UInt8] {
        guard key.count == 32 else { throw KeyManagementError(.invalidKeyMaterial, "AES-256 needs a 32-byte key") }
        guard nonce.count == gcmNonceLength else {
            throw KeyManagementError(.invalidNonce, "AES-GCM nonce must be 12 bytes, got \(nonce.count)")
        }
        // Checked before anything is allocated.
        let aadLengths = try aadLengths(aadParts)
        let ptLength = try cLength(plaintext.count, of: "the plaintext")
        let ctx = try CipherContextPool.shared.take()
        defer { CipherContextPool.shared.give(ctx) }
        let c = ctx.pointer
        var out = [UInt8](repeating: 0, count: prefix.count + plaintext.count + gcmTagLength)
        let ok: Bool = out.withUnsafeMutableBytes { outBuf -> Bool in
            guard let outBase = outBuf.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return false }
            for i in 0..<prefix.count { outBase[i] = prefix[i] }
            guard EVP_EncryptInit_ex(c, aes256GCM.cipher, nil, nil, nil) == 1,
                  es_gcm_set_ivlen(c, Int32(gcmNonceLength)) == 1 else { return false }
            let initOK = nonce.withUnsafeBytes { n in
                EVP_EncryptInit_ex(c, nil, nil, key.baseAddress?.assumingMemoryBound(to: UInt8.self),
                                   n.baseAddress?.assumingMemoryBound(to: UInt8.self))
            }
            guard initOK == 1 else { return false }
            var len: Int32 = 0
            for (part, partLength) in zip(aadParts, aadLengths) where partLength > 0 {
                let r = part.withUnsafeBytes { a in
                    EVP_EncryptUpdate(c, nil, &len, a.baseAddress?.assumingMemoryBound(to: UInt8.self), partLength)
                }
                guard r == 1 else { return false }
            }
            var written = 0
            if !plaintext.isEmpty {
                let r = plaintext.withUnsafeBytes { p in
                    EVP_EncryptUpdate(c, outBase + prefix.count, &len,
                                      p.baseAddress?.assumingMemoryBound(to: UInt8.self), ptLength)
                }
                guard r == 1 else { return false }
                written = Int(len)
            }
            guard EVP_EncryptFinal_ex(c, outBase + prefix.count + written, &len) == 1 else { return false }
            written += Int(len)
            guard written == plaintext.count else { return false }
            return es_gcm_get_tag(c, outBase + prefix.count + written, Int32(gcmTagLength)) == 1
        }
        guard ok else {
            ERR_clear_error()
            throw KeyManagementError(.cryptoFailure, "AES-256-GCM encryption failed")
        }
        return out
    }

    /// The C length of each associated-data part.
    /// - Throws: ``KeyManagementError/Code/limitExceeded`` for a part above `Int32.max` bytes.
    static func aadLengths(_ parts: [[UInt8]]) throws(KeyManagementError) -> [Int32] {
        var lengths: [Int32] = []
        lengths.reserveCapacity(parts.count)
        for part in parts { lengths.append(try cLength(part.count, of: "the associated data")) }
        return lengths
    }

    /// Decrypts `sealed = ciphertext || tag` (starting at `offset`), verifying the tag.
    ///
    /// Returns `nil` when OpenSSL rejects the tag (wrong key, wrong AAD or tampered bytes).
    static func aes256GCMOpen(key: UnsafeRawBufferPointer, nonce: [UInt8], aadParts: [[UInt8]],
                              sealed: [UInt8], offset: Int = 0) throws(KeyManagementError) -> [UInt8]? {
        guard key.count == 32 else { throw KeyManagementError(.invalidKeyMaterial, "AES-256 needs a 32-byte key") }
        guard nonce.count == gcmNonceLength else {
            throw KeyManagementError(.invalidNonce, "AES-GCM nonce must be 12 bytes, got \(nonce.count)")
        }
        guard offset >= 0, sealed.count - offset >= gcmTagLength else { return nil }
        let ctLen = sealed.count - offset - gcmTagLength
        // Checked before anything is allocated.
        let aadLengths = try aadLengths(aadParts)
        let ctLength = try cLength(ctLen, of: "the ciphertext")
        let ctx = try CipherContextPool.shared.take()
        defer { CipherContextPool.shared.give(ctx) }
        let c = ctx.pointer
        var out = [UInt8](repeating: 0, count: ctLen)
        let ok: Bool = sealed.withUnsafeBytes { inBuf -> Bool in
            guard let inBase = inBuf.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return false }
            return out.withUnsafeMutableBytes { outBuf -> Bool in
                guard EVP_DecryptInit_ex(c, aes256GCM.cipher, nil, nil, nil) == 1,
                      es_gcm_set_ivlen(c, Int32(gcmNonceLength)) == 1 else { return false }
                let initOK = nonce.withUnsafeBytes { n in
                    EVP_DecryptInit_ex(c, nil, nil, key.baseAddress?.assumingMemoryBound(to: UInt8.self),
                                       n.baseAddress?.assumingMemoryBound(to: UInt8.self))
                }
                guard initOK == 1 else { return false }
                var len: Int32 = 0
                for (part, partLength) in zip(aadParts, aadLengths) where partLength > 0 {
                    let r = part.withUnsafeBytes { a in
                        EVP_DecryptUpdate(c, nil, &len, a.baseAddress?.assumingMemoryBound(to: UInt8.self), partLength)
                    }
                    guard r == 1 else { return false }
                }
                let outBase = outBuf.baseAddress?.assumingMemoryBound(to: UInt8.self)
                var written = 0
                if ctLen > 0 {
                    guard let outBase,
                          EVP_DecryptUpdate(c, outBase, &len, inBase + offset, ctLength) == 1 else { return false }
                    written = Int(len)
                }
                // The tag buffer is read, not written; OpenSSL's prototype is simply not const.
                guard es_gcm_set_tag(c, UnsafeMutablePointer(mutating: inBase + offset + ctLen), Int32(gcmTagLength)) == 1 else {
                    return false
                }
                var finalBuf = [UInt8](repeating: 0, count: 16)
                let fin = finalBuf.withUnsafeMutableBytes { f in
                    EVP_DecryptFinal_ex(c, f.baseAddress?.assumingMemoryBound(to: UInt8.self), &len)
                }
                return fin == 1 && written == ctLen
            }
        }
        guard ok else {
            ERR_clear_error()
            cleanse(&out)
            return nil
        }
        return out
    }
}

/// An explicitly fetched `EVP_CIPHER`, kept for the life of the process.
final class FetchedCipher: @unchecked Sendable {
    // @unchecked: the pointer is set once in init and only read afterwards; OpenSSL's fetched
    // cipher objects are immutable and safe to share between threads.
    let cipher: OpaquePointer?

    init() {
        // Falls back to the legacy object (implicit fetch per init) if the fetch fails.
        cipher = EVP_CIPHER_fetch(nil, "AES-256-GCM", nil) ?? EVP_aes_256_gcm()
    }
}

/// An OpenSSL `EVP_CIPHER_CTX`, owned by exactly one ``CipherContextPool`` slot or one borrower.
final class CipherContext: @unchecked Sendable {
    // @unchecked: the pointer is only used by the single task that took it from the pool
    // and is handed back before anyone else can take it (the pool's Mutex orders the hand-over).
    let pointer: OpaquePointer

    init() throws(KeyManagementError) {
        guard let p = EVP_CIPHER_CTX_new() else {
            throw KeyManagementError(.cryptoFailure, "EVP_CIPHER_CTX_new failed")
        }
        pointer = p
    }

    deinit { EVP_CIPHER_CTX_free(pointer) }
}

/// Reuses cipher contexts across records instead of allocating one per record: up to 64 are
/// kept. A context is borrowed for one synchronous seal or open, so ``ResourcePool/take()``
/// never waits; past 64 borrowed at once, the extra ones are freed when given back.
enum CipherContextPool {
    static let shared = ResourcePool<CipherContext, KeyManagementError>(
        capacity: 64,
        make: { () throws(KeyManagementError) -> CipherContext in try CipherContext() },
        reset: { ctx in
            // Keys are set per call, and EVP_*Init_ex with a new key replaces the schedule;
            // reset anyway so no key schedule lingers in an idle context.
            EVP_CIPHER_CTX_reset(ctx.pointer)
            return true
        })
}
