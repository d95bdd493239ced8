// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

// Test doubles of the ERC-8004 registries, written for the tests: they keep only what
// their events need. The real registries are upgradeable proxies, so one address has
// emitted every layout of an event over time; each mock therefore emits the current
// events and the legacy overloads (same name, other parameter types) from one address.

/// The identity registry: ERC-721 agents, their URI and metadata.
contract IdentityRegistryMock {
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);
    event Registered(uint256 indexed agentId, string agentURI, address indexed owner);
    event MetadataSet(
        uint256 indexed agentId,
        string indexed indexedMetadataKey,
        string metadataKey,
        bytes metadataValue
    );
    event URIUpdated(uint256 indexed agentId, string newURI, address indexed updatedBy);
    // ERC-4906
    event MetadataUpdate(uint256 _tokenId);

    // Legacy v1.0/v1.1
    event UriUpdated(uint256 indexed agentId, string newUri, address indexed updatedBy);
    // Legacy v1.1: the value was a string
    event MetadataSet(
        uint256 indexed agentId,
        string indexed indexedMetadataKey,
        string metadataKey,
        string metadataValue
    );

    uint256 public nextAgentId;
    mapping(uint256 => address) public ownerOf;

    modifier onlyOwner(uint256 agentId) {
        require(ownerOf[agentId] == msg.sender, "not the agent's owner");
        _;
    }

    function register(
        string memory agentURI,
        string[] memory keys,
        bytes[] memory values
    ) external returns (uint256 agentId) {
        require(keys.length == values.length, "keys and values differ in length");
        agentId = nextAgentId++;
        ownerOf[agentId] = msg.sender;
        emit Transfer(address(0), msg.sender, agentId);
        emit Registered(agentId, agentURI, msg.sender);
        emit MetadataSet(agentId, "agentWallet", "agentWallet", abi.encodePacked(msg.sender));
        for (uint256 i = 0; i < keys.length; i++) {
            emit MetadataSet(agentId, keys[i], keys[i], values[i]);
        }
    }

    function setAgentURI(uint256 agentId, string memory newURI) external onlyOwner(agentId) {
        emit URIUpdated(agentId, newURI, msg.sender);
    }

    function setMetadata(uint256 agentId, string memory key, bytes memory value) external {
        emit MetadataSet(agentId, key, key, value);
    }

    function transferFrom(address from, address to, uint256 agentId) external onlyOwner(agentId) {
        require(from == msg.sender, "from is not the owner");
        ownerOf[agentId] = to;
        emit Transfer(from, to, agentId);
        // A transfer clears the agent's wallet.
        emit MetadataSet(agentId, "agentWallet", "agentWallet", new bytes(0));
    }

    function touch(uint256 agentId) external {
        emit MetadataUpdate(agentId);
    }

    function legacySetUri(uint256 agentId, string memory newUri) external {
        emit UriUpdated(agentId, newUri, msg.sender);
    }

    function legacySetMetadataString(
        uint256 agentId,
        string memory key,
        string memory value
    ) external {
        emit MetadataSet(agentId, key, key, value);
    }
}

/// The reputation registry: feedback of clients on agents, its revocations, responses.
contract ReputationRegistryMock {
    event NewFeedback(
        uint256 indexed agentId,
        address indexed clientAddress,
        uint64 feedbackIndex,
        int128 value,
        uint8 valueDecimals,
        string indexed indexedTag1,
        string tag1,
        string tag2,
        string endpoint,
        string feedbackURI,
        bytes32 feedbackHash
    );
    event FeedbackRevoked(
        uint256 indexed agentId,
        address indexed clientAddress,
        uint64 indexed feedbackIndex
    );
    event ResponseAppended(
        uint256 indexed agentId,
        address indexed clientAddress,
        uint64 feedbackIndex,
        address indexed responder,
        string responseURI,
        bytes32 responseHash
    );

    // Legacy v1.0 (Oct 2025)
    event NewFeedback(
        uint256 indexed agentId,
        address indexed clientAddress,
        uint8 score,
        bytes32 indexed tag1,
        bytes32 tag2,
        string feedbackUri,
        bytes32 feedbackHash
    );
    // Legacy v1.1 (Nov 2025)
    event NewFeedback(
        uint256 indexed agentId,
        address indexed clientAddress,
        uint8 score,
        string indexed tag1,
        string tag2,
        string feedbackUri,
        bytes32 feedbackHash
    );
    // Legacy v1.1 (Jan 7 2026)
    event NewFeedback(
        uint256 indexed agentId,
        address indexed clientAddress,
        uint64 feedbackIndex,
        uint8 score,
        string indexed tag1,
        string tag2,
        string endpoint,
        string feedbackURI,
        bytes32 feedbackHash
    );
    // Legacy v1.1 (Jan 11 2026)
    event NewFeedback(
        uint256 indexed agentId,
        address indexed clientAddress,
        uint64 feedbackIndex,
        uint8 score,
        string indexed indexedTag1,
        string tag1,
        string tag2,
        string endpoint,
        string feedbackURI,
        bytes32 feedbackHash
    );

    // The last feedback index of each (agent, client); the first feedback is 1.
    mapping(uint256 => mapping(address => uint64)) public lastIndex;

    function nextIndex(uint256 agentId) internal returns (uint64) {
        return ++lastIndex[agentId][msg.sender];
    }

    function giveFeedback(
        uint256 agentId,
        int128 value,
        uint8 valueDecimals,
        string memory tag1,
        string memory tag2,
        string memory endpoint,
        string memory feedbackURI,
        bytes32 feedbackHash
    ) external {
        emit NewFeedback(
            agentId,
            msg.sender,
            nextIndex(agentId),
            value,
            valueDecimals,
            tag1,
            tag1,
            tag2,
            endpoint,
            feedbackURI,
            feedbackHash
        );
    }

    function revokeFeedback(uint256 agentId, uint64 feedbackIndex) external {
        emit FeedbackRevoked(agentId, msg.sender, feedbackIndex);
    }

    function appendResponse(
        uint256 agentId,
        address clientAddress,
        uint64 feedbackIndex,
        string memory responseURI,
        bytes32 responseHash
    ) external {
        emit ResponseAppended(
            agentId,
            clientAddress,
            feedbackIndex,
            msg.sender,
            responseURI,
            responseHash
        );
    }

    function legacyFeedbackV10(
        uint256 agentId,
        uint8 score,
        bytes32 tag1,
        bytes32 tag2,
        string memory feedbackUri,
        bytes32 feedbackHash
    ) external {
        emit NewFeedback(agentId, msg.sender, score, tag1, tag2, feedbackUri, feedbackHash);
    }

    function legacyFeedbackV11(
        uint256 agentId,
        uint8 score,
        string memory tag1,
        string memory tag2,
        string memory feedbackUri,
        bytes32 feedbackHash
    ) external {
        emit NewFeedback(agentId, msg.sender, score, tag1, tag2, feedbackUri, feedbackHash);
    }

    function legacyFeedbackV11Index(
        uint256 agentId,
        uint8 score,
        string memory tag1,
        string memory tag2,
        string memory endpoint,
        string memory feedbackURI,
        bytes32 feedbackHash
    ) external {
        emit NewFeedback(
            agentId,
            msg.sender,
            nextIndex(agentId),
            score,
            tag1,
            tag2,
            endpoint,
            feedbackURI,
            feedbackHash
        );
    }

    function legacyFeedbackV11Tag(
        uint256 agentId,
        uint8 score,
        string memory tag1,
        string memory tag2,
        string memory endpoint,
        string memory feedbackURI,
        bytes32 feedbackHash
    ) external {
        emit NewFeedback(
            agentId,
            msg.sender,
            nextIndex(agentId),
            score,
            tag1,
            tag1,
            tag2,
            endpoint,
            feedbackURI,
            feedbackHash
        );
    }

    /// `count` current feedback events in one transaction: large backfills cheaply.
    /// About 7000 gas each, so at most about 2300 per transaction (Hardhat's default
    /// hardfork caps a transaction's gas at 2^24).
    function bulkFeedback(uint256 agentId, uint256 count, int128 value) external {
        string memory tag = "bulk";
        string memory empty = "";
        for (uint256 i = 0; i < count; i++) {
            emit NewFeedback(
                agentId,
                msg.sender,
                nextIndex(agentId),
                value,
                0,
                tag,
                tag,
                empty,
                empty,
                empty,
                bytes32(0)
            );
        }
    }
}

/// The validation registry: requests to validators and their responses.
contract ValidationRegistryMock {
    event ValidationRequest(
        address indexed validatorAddress,
        uint256 indexed agentId,
        string requestURI,
        bytes32 indexed requestHash
    );
    event ValidationResponse(
        address indexed validatorAddress,
        uint256 indexed agentId,
        bytes32 indexed requestHash,
        uint8 response,
        string responseURI,
        bytes32 responseHash,
        string tag
    );

    // Legacy v1.0: the tag was a bytes32
    event ValidationResponse(
        address indexed validatorAddress,
        uint256 indexed agentId,
        bytes32 indexed requestHash,
        uint8 response,
        string responseUri,
        bytes32 responseHash,
        bytes32 tag
    );

    function validationRequest(
        address validatorAddress,
        uint256 agentId,
        string memory requestURI,
        bytes32 requestHash
    ) external {
        emit ValidationRequest(validatorAddress, agentId, requestURI, requestHash);
    }

    function validationResponse(
        bytes32 requestHash,
        uint256 agentId,
        uint8 response,
        string memory responseURI,
        bytes32 responseHash,
        string memory tag
    ) external {
        emit ValidationResponse(
            msg.sender,
            agentId,
            requestHash,
            response,
            responseURI,
            responseHash,
            tag
        );
    }

    function legacyValidationResponse(
        bytes32 requestHash,
        uint256 agentId,
        uint8 response,
        string memory responseUri,
        bytes32 responseHash,
        bytes32 tag
    ) external {
        emit ValidationResponse(
            msg.sender,
            agentId,
            requestHash,
            response,
            responseUri,
            responseHash,
            tag
        );
    }
}

/// Logs that are not the registries': an indexer must filter them out by address.
contract Noise {
    // ERC-20's Transfer: the same topic0 as ERC-721's, with two indexed topics.
    event Transfer(address indexed from, address indexed to, uint256 value);
    event Ping(uint256 indexed n, string note);

    function transfer(address to, uint256 value) external {
        emit Transfer(msg.sender, to, value);
    }

    function ping(uint256 n, string memory note) external {
        emit Ping(n, note);
    }
}
