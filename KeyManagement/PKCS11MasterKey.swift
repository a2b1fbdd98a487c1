import CPKCS11
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A master key inside a PKCS#11 token (an HSM, a smart card, SoftHSM2): an AES-256 key that
/// never leaves it. Data keys are wrapped and unwrapped inside the token with AES-GCM.
///
/// Named by a `pkcs11:` URI (RFC 7512, see ``PKCS11URI``), e.g.
/// `pkcs11:token=es-prod;object=es-master?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin`.
///
/// - Wrapped bytes: `iv (12) | ciphertext | tag (16)`, the same layout as a local key's: the
///   IV comes from OpenSSL's RNG (a token's own IV generation is not used, so the layout is
///   the same everywhere), the tag is 128 bits, the associated data is the keyring's.
/// - ``id``: `p11-` and 12 hex digits of SHA-256 over the key object's CKA_LABEL and CKA_ID,
///   read from the token. Not the token's serial: a key replicated to every member of an HSM
///   cluster has one id. A different key given the same label and id does not open the store:
///   its check record fails (``KeyManagementError/Code/wrongMasterKey``).
/// - One session per key, logged in as the user, used by one call at a time (PKCS#11 sessions
///   are not thread-safe). A session the token drops is opened again on the next call; the
///   PIN is kept for that in a buffer zeroized when the key is released.
public final class PKCS11MasterKey: KeyEncryptionKey, @unchecked Sendable {
    // @unchecked: the session state is inside a Mutex; the rest is immutable.

    public let id: String
    public var kind: String { "pkcs11" }
    /// The URI it was opened with.
    public let uri: PKCS11URI
    /// The key object's label, as read from the token.
    public let label: String
    /// The token's label, as read from it.
    public let tokenLabel: String

    private let module: Module
    private let slot: UInt
    private let pin: KeyMaterial?
    private let session: Mutex<Session?>

    struct Session {
        var handle: UInt
        var key: UInt
    }

    /// The longest PIN accepted, in bytes.
    public static let maxPINLength = 256
    /// The longest wrapped value accepted.
    static let maxWrappedLength = 4096

    /// Loads the module, finds the token and the key, and logs in.
    /// - Parameters:
    ///   - uri: the token and key (see ``PKCS11URI``).
    ///   - pin: the user PIN (zeroized here); if nil, the URI's `pin-source` file is read; if
    ///     there is none either, no login is made.
    ///   - modulePath: the module when the URI has no `module-path`.
    /// - Throws: ``KeyManagementError/Code/keySourceUnavailable`` for a module or PIN file that
    ///   cannot be read or loaded; ``KeyManagementError/Code/keySourceFailed`` for a token that
    ///   is not there, a wrong or locked PIN, a key that is missing, ambiguous or not AES-256,
    ///   or any other failure of the token; each names the token and key, never the PIN.
    public init(uri: PKCS11URI, pin: inout [UInt8]?, modulePath: String? = nil) throws(KeyManagementError) {
        defer { pin?.withUnsafeMutableBytes { LibCrypto.cleanse($0) } }
        self.uri = uri
        guard let path = uri.modulePath ?? modulePath else {
            throw KeyManagementError(.invalidArgument,
                "no PKCS#11 module: add module-path=/path/to/module.so to the URI's query (e.g. ?module-path=/usr/lib/softhsm/libsofthsm2.so)")
        }
        module = try Module.load(path)
        var pinBytes = pin
        if pinBytes == nil, let source = uri.pinSource { pinBytes = try Self.readPIN(source) }
        self.pin = pinBytes.map { var b = $0; return KeyMaterial(consuming: &b) }
        pinBytes?.withUnsafeMutableBytes { LibCrypto.cleanse($0) }
        let (slot, tokenLabel) = try module.findToken(uri)
        self.slot = slot
        self.tokenLabel = tokenLabel
        let opened = try module.openSession(slot: slot, pin: self.pin, token: tokenLabel, readWrite: false)
        do throws(KeyManagementError) {
            let (key, label, keyID) = try module.findKey(opened, uri: uri, token: tokenLabel)
            self.label = label
            id = KeyEncryptionKeyID.derive(prefix: "p11-", domain: "eventsourcing.kek-id.pkcs11.v1",
                                           parts: [Array(label.utf8), keyID])
            session = Mutex(Session(handle: opened, key: key))
        } catch {
            module.closeSession(opened)
            throw error
        }
    }

    /// Loads the key with the PIN (if any) from the URI's `pin-source`.
    public convenience init(uri: String, modulePath: String? = nil) throws(KeyManagementError) {
        var none: [UInt8]? = nil
        try self.init(uri: PKCS11URI(parsing: uri), pin: &none, modulePath: modulePath)
    }

    deinit {
        session.withLock { s in
            if let s { module.closeSession(s.handle) }
            s = nil
        }
    }

    public var description: String { "PKCS11MasterKey(id: \(id), token: \(tokenLabel), key: \(label))" }

    /// Creates an AES-256 key in the token, for a new master key: CKA_TOKEN, CKA_PRIVATE and
    /// CKA_SENSITIVE true, CKA_EXTRACTABLE false, encrypt and decrypt allowed (nothing else).
    /// The label is the URI's `object`, the id its `id` (or 16 random bytes).
    /// - Throws: what ``init(uri:pin:modulePath:)`` throws, and ``KeyManagementError/Code/keyExists``
    ///   if the token already has a key with that label or id (nothing is created then).
    @discardableResult
    public static func generate(uri: PKCS11URI, pin: inout [UInt8]?, modulePath: String? = nil) throws(KeyManagementError) -> PKCS11MasterKey {
        defer { pin?.withUnsafeMutableBytes { LibCrypto.cleanse($0) } }
        guard let label = uri.object else {
            throw KeyManagementError(.invalidArgument, "to create a key, the PKCS#11 URI needs object=LABEL")
        }
        guard let path = uri.modulePath ?? modulePath else {
            throw KeyManagementError(.invalidArgument, "no PKCS#11 module: add module-path=/path/to/module.so to the URI's query")
        }
        let module = try Module.load(path)
        var pinBytes = pin
        if pinBytes == nil, let source = uri.pinSource { pinBytes = try readPIN(source) }
        let pinKey = pinBytes.map { var b = $0; return KeyMaterial(consuming: &b) }
        pinBytes?.withUnsafeMutableBytes { LibCrypto.cleanse($0) }
        let (slot, tokenLabel) = try module.findToken(uri)
        let s = try module.openSession(slot: slot, pin: pinKey, token: tokenLabel, readWrite: true)
        defer { module.closeSession(s) }
        // Only a search that finds nothing lets it go on: a failed search is thrown, and several
        // keys of that label are keys of that label.
        let byLabel = try module.searchKeys(s, uri: PKCS11URI(object: label), token: tokenLabel).found
        let byID = uri.id == nil ? 0 : try module.searchKeys(s, uri: PKCS11URI(id: uri.id), token: tokenLabel).found
        if byLabel > 0 || byID > 0 {
            throw KeyManagementError(.keyExists, "token '\(tokenLabel)' already has a key labelled '\(label)' (or with its id); nothing was created")
        }
        let keyID: [UInt8]
        if let given = uri.id { keyID = given } else { keyID = try LibCrypto.randomBytes(16) }
        try module.generateAES256(s, label: label, id: keyID, token: tokenLabel)
        var again = pinKey.map { k in k.withUnsafeBytes { Array($0) } }
        var withID = uri
        withID.id = keyID
        return try PKCS11MasterKey(uri: withID, pin: &again, modulePath: path)
    }

    public func wrap(_ plaintext: [UInt8], aad: [UInt8]) throws(KeyManagementError) -> [UInt8] {
        let iv = try AES256GCM.randomNonce()
        let sealed = try withSession { (s) throws(KeyManagementError) -> [UInt8]? in
            try module.gcm(encrypt: true, s, iv: iv, aad: aad, input: plaintext, what: "wrap under key '\(label)' on token '\(tokenLabel)'")
        }
        guard let sealed else {
            throw KeyManagementError(.keySourceFailed, "token '\(tokenLabel)' refused to encrypt with key '\(label)'")
        }
        return iv + sealed
    }

    public func unwrap(_ wrapped: [UInt8], aad: [UInt8]) throws(KeyManagementError) -> [UInt8]? {
        guard wrapped.count >= AES256GCM.nonceLength + AES256GCM.tagLength, wrapped.count <= Self.maxWrappedLength else { return nil }
        let iv = Array(wrapped[0..<AES256GCM.nonceLength])
        let body = Array(wrapped[AES256GCM.nonceLength...])
        return try withSession { (s) throws(KeyManagementError) -> [UInt8]? in
            try module.gcm(encrypt: false, s, iv: iv, aad: aad, input: body, what: "unwrap under key '\(label)' on token '\(tokenLabel)'")
        }
    }

    /// Runs `body` on the session, opening a new one if the token dropped it.
    private func withSession<T>(_ body: (Session) throws(KeyManagementError) -> T) throws(KeyManagementError) -> T {
        try session.withLock { (s) throws(KeyManagementError) -> T in
            if s == nil {
                let h = try module.openSession(slot: slot, pin: pin, token: tokenLabel, readWrite: false)
                do throws(KeyManagementError) {
                    let (key, _, _) = try module.findKey(h, uri: uri, token: tokenLabel)
                    s = Session(handle: h, key: key)
                } catch {
                    module.closeSession(h)
                    throw error
                }
            }
            guard let current = s else { throw KeyManagementError(.keySourceFailed, "no PKCS#11 session") }
            do throws(KeyManagementError) {
                return try body(current)
            } catch let e where e.code == .keySourceFailed {
                // The session may be gone (token removed, module restarted): the next call opens another.
                module.closeSession(current.handle)
                s = nil
                throw e
            }
        }
    }

    /// The PIN from `path`: at most ``maxPINLength`` bytes, one trailing newline dropped.
    static func readPIN(_ path: String) throws(KeyManagementError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw KeyManagementError(.keySourceUnavailable, "cannot read the PIN file \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: maxPINLength + 2)
        var filled = 0
        while filled < buffer.count {
            let n = buffer.withUnsafeMutableBytes { b -> Int in
                guard let base = b.baseAddress else { return 0 }
                return read(fd, base + filled, b.count - filled)
            }
            if n > 0 { filled += n } else if n == 0 { break } else if errno != EINTR {
                LibCrypto.cleanse(&buffer)
                throw KeyManagementError(.keySourceUnavailable, "cannot read the PIN file \(path)")
            }
        }
        var end = filled
        if end > 0, buffer[end - 1] == 0x0A { end -= 1 }
        if end > 0, buffer[end - 1] == 0x0D { end -= 1 }
        guard end > 0, end <= maxPINLength else {
            LibCrypto.cleanse(&buffer)
            throw KeyManagementError(.invalidKeyMaterial, "the PIN file \(path) is empty or longer than \(maxPINLength) bytes")
        }
        var pin = Array(buffer[0..<end])
        LibCrypto.cleanse(&buffer)
        defer { LibCrypto.cleanse(&pin) }
        return pin
    }
}

extension PKCS11URI {
    init(object: String? = nil, id: [UInt8]? = nil) {
        self.object = object
        self.id = id
    }
}

// MARK: - The module

/// A loaded PKCS#11 module: dlopen'ed and initialised once per path for the process (never
/// finalised: other keys of the process may use it).
final class Module: @unchecked Sendable {
    // @unchecked: `list` points at the module's function table, immutable once loaded.
    let path: String
    let list: UnsafeMutablePointer<es_ck_function_list>

    private static let loaded = Mutex<[String: Module]>([:])

    private init(path: String, list: UnsafeMutablePointer<es_ck_function_list>) {
        self.path = path
        self.list = list
    }

    static func load(_ path: String) throws(KeyManagementError) -> Module {
        try loaded.withLock { (modules) throws(KeyManagementError) -> Module in
            if let m = modules[path] { return m }
            guard path.hasPrefix("/") else {
                throw KeyManagementError(.invalidArgument, "the PKCS#11 module-path must be absolute, got \(path)")
            }
            guard access(path, R_OK) == 0 else {
                throw KeyManagementError(.keySourceUnavailable, "cannot read the PKCS#11 module \(path): \(String(cString: strerror(errno)))")
            }
            guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
                let reason = dlerror().map { String(cString: $0) } ?? "unknown reason"
                throw KeyManagementError(.keySourceUnavailable, "cannot load the PKCS#11 module \(path): \(reason)")
            }
            guard let symbol = dlsym(handle, "C_GetFunctionList") else {
                dlclose(handle)
                throw KeyManagementError(.keySourceUnavailable, "\(path) is not a PKCS#11 module (no C_GetFunctionList)")
            }
            let getList = unsafeBitCast(symbol, to: es_ck_get_function_list.self)
            var list: UnsafeMutablePointer<es_ck_function_list>?
            let rv = getList(&list)
            guard rv == ES_CKR_OK, let list, list.pointee.version.major == 2 || list.pointee.version.major == 3 else {
                dlclose(handle)
                throw KeyManagementError(.keySourceUnavailable, "the PKCS#11 module \(path) gave no usable function list (\(Self.name(rv)))")
            }
            var args = es_ck_c_initialize_args(create_mutex: nil, destroy_mutex: nil, lock_mutex: nil, unlock_mutex: nil,
                                               flags: ES_CKF_OS_LOCKING_OK, reserved: nil)
            let initRV = list.pointee.C_Initialize.map { $0(&args) } ?? ES_CKR_GENERAL_ERROR
            guard initRV == ES_CKR_OK || initRV == ES_CKR_CRYPTOKI_ALREADY_INITIALIZED else {
                dlclose(handle)
                throw KeyManagementError(.keySourceFailed, "the PKCS#11 module \(path) failed to initialise (\(Self.name(initRV)))")
            }
            let m = Module(path: path, list: list)
            modules[path] = m
            return m
        }
    }

    /// The slot of the one token the URI selects, and its label.
    func findToken(_ uri: PKCS11URI) throws(KeyManagementError) -> (UInt, String) {
        guard let getSlots = list.pointee.C_GetSlotList, let getInfo = list.pointee.C_GetTokenInfo else {
            throw KeyManagementError(.keySourceUnavailable, "the PKCS#11 module \(path) lacks C_GetSlotList")
        }
        var count: UInt = 0
        var rv = getSlots(1, nil, &count)
        guard rv == ES_CKR_OK else { throw failure("list its slots", rv) }
        guard count <= 4096 else { throw KeyManagementError(.keySourceFailed, "the PKCS#11 module \(path) reports \(count) slots") }
        var slots = [UInt](repeating: 0, count: Int(count))
        rv = slots.withUnsafeMutableBufferPointer { getSlots(1, $0.baseAddress, &count) }
        guard rv == ES_CKR_OK else { throw failure("list its slots", rv) }
        var matches: [(UInt, String)] = []
        var present: [String] = []
        for slot in slots.prefix(Int(count)) {
            var info = es_ck_token_info()
            guard getInfo(slot, &info) == ES_CKR_OK else { continue }
            let label = Self.text(info.label), serial = Self.text(info.serial_number)
            let manufacturer = Self.text(info.manufacturer_id), model = Self.text(info.model)
            present.append("'\(label)'")
            if let t = uri.token, t != label { continue }
            if let s = uri.serial, s != serial { continue }
            if let m = uri.manufacturer, m != manufacturer { continue }
            if let m = uri.model, m != model { continue }
            if let id = uri.slotID, id != slot { continue }
            matches.append((slot, label))
        }
        guard let first = matches.first else {
            throw KeyManagementError(.keySourceFailed,
                "no PKCS#11 token \(uri.tokenName) in module \(path) (tokens present: \(present.isEmpty ? "none" : present.joined(separator: ", ")))")
        }
        guard matches.count == 1 else {
            throw KeyManagementError(.keySourceFailed,
                "the PKCS#11 URI matches \(matches.count) tokens in module \(path); add serial= or slot-id= to choose one")
        }
        return first
    }

    func openSession(slot: UInt, pin: KeyMaterial?, token: String, readWrite: Bool) throws(KeyManagementError) -> UInt {
        guard let open = list.pointee.C_OpenSession, let login = list.pointee.C_Login else {
            throw KeyManagementError(.keySourceUnavailable, "the PKCS#11 module \(path) lacks C_OpenSession")
        }
        var handle: UInt = 0
        let flags = ES_CKF_SERIAL_SESSION | (readWrite ? ES_CKF_RW_SESSION : 0)
        let rv = open(slot, flags, nil, nil, &handle)
        guard rv == ES_CKR_OK else {
            if rv == ES_CKR_TOKEN_NOT_PRESENT || rv == ES_CKR_DEVICE_REMOVED {
                throw KeyManagementError(.keySourceFailed, "PKCS#11 token '\(token)' is not present (\(Self.name(rv)))")
            }
            throw failure("open a session on token '\(token)'", rv)
        }
        guard let pin else { return handle }
        let loginRV = pin.withUnsafeBytes { p -> UInt in
            var copy = Array(p)
            defer { LibCrypto.cleanse(&copy) }
            return copy.withUnsafeMutableBufferPointer { login(handle, ES_CKU_USER, $0.baseAddress, UInt($0.count)) }
        }
        switch loginRV {
        case ES_CKR_OK, ES_CKR_USER_ALREADY_LOGGED_IN:
            return handle
        case ES_CKR_PIN_INCORRECT, ES_CKR_PIN_INVALID, ES_CKR_PIN_LEN_RANGE:
            closeSession(handle)
            throw KeyManagementError(.keySourceFailed,
                "the PIN for PKCS#11 token '\(token)' is incorrect (\(Self.name(loginRV))); tokens lock the user PIN after a few failures")
        case ES_CKR_PIN_LOCKED:
            closeSession(handle)
            throw KeyManagementError(.keySourceFailed, "the user PIN of PKCS#11 token '\(token)' is locked: the security officer must reset it")
        case ES_CKR_PIN_EXPIRED:
            closeSession(handle)
            throw KeyManagementError(.keySourceFailed, "the user PIN of PKCS#11 token '\(token)' has expired: set a new one")
        default:
            closeSession(handle)
            throw failure("log in to token '\(token)'", loginRV)
        }
    }

    func closeSession(_ handle: UInt) {
        _ = list.pointee.C_CloseSession?(handle)
    }

    /// The one AES secret key the URI names: its handle, label and CKA_ID.
    func findKey(_ session: UInt, uri: PKCS11URI, token: String) throws(KeyManagementError) -> (UInt, String, [UInt8]) {
        let (found, key) = try searchKeys(session, uri: uri, token: token)
        guard found >= 1 else {
            throw KeyManagementError(.keySourceFailed,
                "PKCS#11 token '\(token)' has no AES key \(uri.keyName) visible to this login (is the key's label right, and was a PIN given?)")
        }
        guard found == 1 else {
            throw KeyManagementError(.keySourceFailed, "PKCS#11 token '\(token)' has several AES keys \(uri.keyName): add id= to the URI to choose one")
        }
        let keyLabel = try attribute(session, key, ES_CKA_LABEL, token: token)
        let keyID = try attribute(session, key, ES_CKA_ID, token: token)
        let lengthBytes = try attribute(session, key, ES_CKA_VALUE_LEN, token: token)
        if lengthBytes.count == MemoryLayout<UInt>.size {
            let length = lengthBytes.withUnsafeBytes { $0.loadUnaligned(as: UInt.self) }
            guard length == 32 else {
                throw KeyManagementError(.keySourceFailed, "key \(uri.keyName) on PKCS#11 token '\(token)' is AES-\(length * 8), not AES-256")
            }
        }
        return (key, String(decoding: keyLabel, as: UTF8.self), keyID)
    }

    /// How many AES secret keys the URI matches (0, 1, or 2 for "several") and the first one's
    /// handle; throws only if the search itself fails.
    func searchKeys(_ session: UInt, uri: PKCS11URI, token: String) throws(KeyManagementError) -> (found: UInt, first: UInt) {
        guard let findInit = list.pointee.C_FindObjectsInit, let find = list.pointee.C_FindObjects,
              let findFinal = list.pointee.C_FindObjectsFinal else {
            throw KeyManagementError(.keySourceUnavailable, "the PKCS#11 module \(path) lacks C_FindObjects")
        }
        var cls = ES_CKO_SECRET_KEY, type = ES_CKK_AES
        var label = Array((uri.object ?? "").utf8)
        var id = uri.id ?? []
        var objects = [UInt](repeating: 0, count: 2)
        var found: UInt = 0
        let rv: UInt = withUnsafeMutableBytes(of: &cls) { c in
            withUnsafeMutableBytes(of: &type) { t in
                label.withUnsafeMutableBytes { l in
                    id.withUnsafeMutableBytes { i in
                        var template = [es_ck_attribute(type: ES_CKA_CLASS, value: c.baseAddress, value_len: UInt(c.count)),
                                        es_ck_attribute(type: ES_CKA_KEY_TYPE, value: t.baseAddress, value_len: UInt(t.count))]
                        if uri.object != nil { template.append(es_ck_attribute(type: ES_CKA_LABEL, value: l.baseAddress, value_len: UInt(l.count))) }
                        if uri.id != nil { template.append(es_ck_attribute(type: ES_CKA_ID, value: i.baseAddress, value_len: UInt(i.count))) }
                        let r = template.withUnsafeMutableBufferPointer { findInit(session, $0.baseAddress, UInt($0.count)) }
                        guard r == ES_CKR_OK else { return r }
                        let f = objects.withUnsafeMutableBufferPointer { find(session, $0.baseAddress, 2, &found) }
                        _ = findFinal(session)
                        return f
                    }
                }
            }
        }
        guard rv == ES_CKR_OK else { throw failure("search token '\(token)' for key \(uri.keyName)", rv) }
        return (min(found, 2), objects[0])
    }

    /// An attribute's bytes (at most 1 KiB; empty if the token does not have it).
    private func attribute(_ session: UInt, _ object: UInt, _ type: UInt, token: String) throws(KeyManagementError) -> [UInt8] {
        guard let get = list.pointee.C_GetAttributeValue else { return [] }
        var a = es_ck_attribute(type: type, value: nil, value_len: 0)
        guard get(session, object, &a, 1) == ES_CKR_OK, a.value_len != UInt.max else { return [] }
        guard a.value_len <= 1024 else { throw KeyManagementError(.keySourceFailed, "PKCS#11 token '\(token)' reports an attribute of \(a.value_len) bytes") }
        var out = [UInt8](repeating: 0, count: Int(a.value_len))
        let rv = out.withUnsafeMutableBytes { b -> UInt in
            a.value = b.baseAddress
            return get(session, object, &a, 1)
        }
        guard rv == ES_CKR_OK else { return [] }
        return Array(out.prefix(Int(a.value_len)))
    }

    /// AES-GCM in the token: the output (ciphertext | tag, or plaintext), nil when decryption
    /// fails its integrity check.
    func gcm(encrypt: Bool, _ s: PKCS11MasterKey.Session, iv: [UInt8], aad: [UInt8], input: [UInt8],
             what: String) throws(KeyManagementError) -> [UInt8]? {
        guard let initFn = encrypt ? list.pointee.C_EncryptInit : list.pointee.C_DecryptInit,
              let run = encrypt ? list.pointee.C_Encrypt : list.pointee.C_Decrypt else {
            throw KeyManagementError(.keySourceUnavailable, "the PKCS#11 module \(path) lacks C_Encrypt/C_Decrypt")
        }
        var iv = iv, aad = aad, input = input
        defer { LibCrypto.cleanse(&input) }
        var out = [UInt8](repeating: 0, count: input.count + AES256GCM.tagLength)
        var outLength = UInt(out.count)
        let (initRV, runRV): (UInt, UInt) = iv.withUnsafeMutableBufferPointer { ivp in
            aad.withUnsafeMutableBufferPointer { aadp in
                var params = es_ck_gcm_params(iv: ivp.baseAddress, iv_len: UInt(ivp.count), iv_bits: UInt(ivp.count * 8),
                                              aad: aadp.baseAddress, aad_len: UInt(aadp.count), tag_bits: 128)
                return withUnsafeMutableBytes(of: &params) { pp in
                    var mechanism = es_ck_mechanism(mechanism: ES_CKM_AES_GCM, parameter: pp.baseAddress, parameter_len: UInt(pp.count))
                    let i = initFn(s.handle, &mechanism, s.key)
                    guard i == ES_CKR_OK else { return (i, ES_CKR_OK) }
                    let r = input.withUnsafeMutableBufferPointer { inp in
                        out.withUnsafeMutableBufferPointer { o in run(s.handle, inp.baseAddress, UInt(inp.count), o.baseAddress, &outLength) }
                    }
                    return (i, r)
                }
            }
        }
        guard initRV == ES_CKR_OK else {
            LibCrypto.cleanse(&out)
            throw failure(what, initRV)
        }
        guard runRV == ES_CKR_OK, outLength <= UInt(out.count) else {
            LibCrypto.cleanse(&out)
            if !encrypt, [ES_CKR_ENCRYPTED_DATA_INVALID, ES_CKR_ENCRYPTED_DATA_LEN_RANGE, ES_CKR_AEAD_DECRYPT_FAILED].contains(runRV) {
                return nil
            }
            // Some tokens (SoftHSM2) report a GCM tag mismatch as CKR_GENERAL_ERROR. Tell it
            // from a failing token by an encryption with the same session and key: if that
            // works, the token is fine and the bytes did not authenticate.
            if !encrypt, runRV == ES_CKR_GENERAL_ERROR, let probeIV = try? AES256GCM.randomNonce(),
               (try? gcm(encrypt: true, s, iv: probeIV, aad: [], input: [UInt8](repeating: 0, count: 16), what: what)) != nil {
                return nil
            }
            throw failure(what, runRV)
        }
        var result = Array(out.prefix(Int(outLength)))
        LibCrypto.cleanse(&out)
        defer { LibCrypto.cleanse(&result) }
        return result
    }

    func generateAES256(_ session: UInt, label: String, id: [UInt8], token: String) throws(KeyManagementError) {
        guard let generate = list.pointee.C_GenerateKey else {
            throw KeyManagementError(.keySourceUnavailable, "the PKCS#11 module \(path) lacks C_GenerateKey")
        }
        var yes: UInt8 = 1, no: UInt8 = 0
        var cls = ES_CKO_SECRET_KEY, type = ES_CKK_AES, length: UInt = 32
        var labelBytes = Array(label.utf8), idBytes = id
        var handle: UInt = 0
        let rv: UInt = withUnsafeMutableBytes(of: &yes) { y in
            withUnsafeMutableBytes(of: &no) { n in
                withUnsafeMutableBytes(of: &cls) { c in
                    withUnsafeMutableBytes(of: &type) { t in
                        withUnsafeMutableBytes(of: &length) { l in
                            labelBytes.withUnsafeMutableBytes { lb in
                                idBytes.withUnsafeMutableBytes { ib in
                                    func attr(_ type: UInt, _ b: UnsafeMutableRawBufferPointer) -> es_ck_attribute {
                                        es_ck_attribute(type: type, value: b.baseAddress, value_len: UInt(b.count))
                                    }
                                    var template = [attr(ES_CKA_CLASS, c), attr(ES_CKA_KEY_TYPE, t), attr(ES_CKA_VALUE_LEN, l),
                                                    attr(ES_CKA_TOKEN, y), attr(ES_CKA_PRIVATE, y), attr(ES_CKA_SENSITIVE, y),
                                                    attr(ES_CKA_EXTRACTABLE, n), attr(ES_CKA_ENCRYPT, y), attr(ES_CKA_DECRYPT, y),
                                                    attr(ES_CKA_WRAP, n), attr(ES_CKA_UNWRAP, n), attr(ES_CKA_SIGN, n),
                                                    attr(ES_CKA_VERIFY, n), attr(ES_CKA_LABEL, lb), attr(ES_CKA_ID, ib)]
                                    var mechanism = es_ck_mechanism(mechanism: ES_CKM_AES_KEY_GEN, parameter: nil, parameter_len: 0)
                                    return template.withUnsafeMutableBufferPointer {
                                        generate(session, &mechanism, $0.baseAddress, UInt($0.count), &handle)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        guard rv == ES_CKR_OK else { throw failure("create AES-256 key '\(label)' on token '\(token)'", rv) }
    }

    private func failure(_ what: String, _ rv: UInt) -> KeyManagementError {
        KeyManagementError(.keySourceFailed, "PKCS#11 module \(path) could not \(what): \(Self.name(rv))")
    }

    /// A return value's name, for messages.
    static func name(_ rv: UInt) -> String {
        let names: [UInt: String] = [
            ES_CKR_OK: "CKR_OK", ES_CKR_GENERAL_ERROR: "CKR_GENERAL_ERROR", ES_CKR_ARGUMENTS_BAD: "CKR_ARGUMENTS_BAD",
            ES_CKR_DEVICE_ERROR: "CKR_DEVICE_ERROR", ES_CKR_DEVICE_REMOVED: "CKR_DEVICE_REMOVED",
            ES_CKR_AEAD_DECRYPT_FAILED: "CKR_AEAD_DECRYPT_FAILED", ES_CKR_ENCRYPTED_DATA_INVALID: "CKR_ENCRYPTED_DATA_INVALID",
            ES_CKR_ENCRYPTED_DATA_LEN_RANGE: "CKR_ENCRYPTED_DATA_LEN_RANGE", ES_CKR_KEY_HANDLE_INVALID: "CKR_KEY_HANDLE_INVALID",
            ES_CKR_KEY_FUNCTION_NOT_PERMITTED: "CKR_KEY_FUNCTION_NOT_PERMITTED", ES_CKR_MECHANISM_INVALID: "CKR_MECHANISM_INVALID",
            ES_CKR_MECHANISM_PARAM_INVALID: "CKR_MECHANISM_PARAM_INVALID", ES_CKR_PIN_INCORRECT: "CKR_PIN_INCORRECT",
            ES_CKR_PIN_INVALID: "CKR_PIN_INVALID", ES_CKR_PIN_LEN_RANGE: "CKR_PIN_LEN_RANGE", ES_CKR_PIN_EXPIRED: "CKR_PIN_EXPIRED",
            ES_CKR_PIN_LOCKED: "CKR_PIN_LOCKED", ES_CKR_SESSION_CLOSED: "CKR_SESSION_CLOSED",
            ES_CKR_SESSION_HANDLE_INVALID: "CKR_SESSION_HANDLE_INVALID", ES_CKR_TOKEN_NOT_PRESENT: "CKR_TOKEN_NOT_PRESENT",
            ES_CKR_TOKEN_NOT_RECOGNIZED: "CKR_TOKEN_NOT_RECOGNIZED", ES_CKR_USER_NOT_LOGGED_IN: "CKR_USER_NOT_LOGGED_IN",
            ES_CKR_BUFFER_TOO_SMALL: "CKR_BUFFER_TOO_SMALL", ES_CKR_CRYPTOKI_NOT_INITIALIZED: "CKR_CRYPTOKI_NOT_INITIALIZED",
        ]
        return names[rv] ?? "CKR 0x" + String(rv, radix: 16)
    }

    /// A blank-padded PKCS#11 text field, without the padding.
    static func text<T>(_ field: T) -> String {
        withUnsafeBytes(of: field) { b in
            var end = b.count
            while end > 0, b[end - 1] == 0x20 || b[end - 1] == 0 { end -= 1 }
            return String(decoding: b.prefix(end), as: UTF8.self)
        }
    }
}
