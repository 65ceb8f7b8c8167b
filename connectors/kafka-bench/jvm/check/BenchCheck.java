import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.Set;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Test helper for the JVM contenders: makes topics, writes input, and checks
 * a contender's output. A single-file program that needs only kafka-clients:
 *
 * <pre>
 * java -cp 'kstreams/target/lib/*' check/BenchCheck.java create  BOOTSTRAP PARTITIONS TOPIC...
 * java -cp 'kstreams/target/lib/*' check/BenchCheck.java produce BOOTSTRAP TOPIC RECORDS KEYS
 * java -cp 'kstreams/target/lib/*' check/BenchCheck.java verify  BOOTSTRAP TOPIC RECORDS KEYS TIMEOUT_S
 * </pre>
 *
 * <p>{@code produce} writes records {@code 0 .. RECORDS-1}: record {@code i}
 * has key {@code k<i % KEYS>} and value {@code "<i> <epoch ms>"}.
 *
 * <p>{@code verify} reads the output topic with {@code read_committed} from the
 * beginning until it has seen RECORDS records (it prints how long that took,
 * counted from its own start) and then up to the last stable offset of every
 * partition, and checks that every input record {@code i} appears exactly
 * once, with its own key and the count {@code i / KEYS + 1}, and that each
 * key's counts come in the order 1, 2, 3, ... It prints a summary and exits
 * with status 1 when a check fails or the timeout passes first.
 */
public final class BenchCheck {

    private BenchCheck() {}

    /**
     * Runs one command.
     *
     * @param args the command and its arguments, as in the class comment
     * @throws Exception when Kafka fails the request
     */
    public static void main(String[] args) throws Exception {
        String command = args.length > 0 ? args[0] : "";
        switch (command) {
            case "create" -> create(args[1], Integer.parseInt(args[2]), List.of(args).subList(3, args.length));
            case "produce" -> produce(args[1], args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]));
            case "verify" -> System.exit(
                    verify(args[1], args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]),
                            Duration.ofSeconds(Long.parseLong(args[5]))) ? 0 : 1);
            default -> {
                System.err.println("usage: BenchCheck create|produce|verify ... (see the class comment)");
                System.exit(2);
            }
        }
    }

    /** Creates the topics with replication factor 1. */
    private static void create(String bootstrap, int partitions, List<String> topics) throws Exception {
        Properties config = new Properties();
        config.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(config)) {
            List<NewTopic> newTopics = new ArrayList<>();
            for (String topic : topics) {
                newTopics.add(new NewTopic(topic, Optional.of(partitions), Optional.of((short) 1)));
            }
            admin.createTopics(newTopics).all().get();
        }
        System.out.println("created " + topics + " with " + partitions + " partitions");
    }

    /** Writes the input records, with the producer's default settings. */
    private static void produce(String bootstrap, String topic, int records, int keys) {
        Properties config = new Properties();
        config.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        long start = System.nanoTime();
        try (KafkaProducer<String, String> producer =
                new KafkaProducer<>(config, new StringSerializer(), new StringSerializer())) {
            for (int i = 0; i < records; i++) {
                producer.send(new ProducerRecord<>(topic, "k" + i % keys, i + " " + System.currentTimeMillis()));
            }
            producer.flush();
        }
        System.out.printf("produced %d records with %d keys in %.1f s%n",
                records, keys, (System.nanoTime() - start) / 1e9);
    }

    /** Reads the output and checks it; true when every check passes. */
    private static boolean verify(String bootstrap, String topic, int records, int keys, Duration timeout) {
        Properties config = new Properties();
        config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        config.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        long start = System.nanoTime();
        long deadline = start + timeout.toNanos();
        int[] seen = new int[records];
        Map<String, Long> lastCount = new HashMap<>();
        List<String> problems = new ArrayList<>();
        int read = 0;
        try (KafkaConsumer<String, String> consumer =
                new KafkaConsumer<>(config, new StringDeserializer(), new StringDeserializer())) {
            List<TopicPartition> partitions = consumer.partitionsFor(topic).stream()
                    .map(p -> new TopicPartition(topic, p.partition()))
                    .toList();
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            boolean reachedTarget = false;
            while (System.nanoTime() < deadline) {
                for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(200))) {
                    read++;
                    check(record, records, keys, seen, lastCount, problems);
                }
                if (!reachedTarget && read >= records) {
                    reachedTarget = true;
                    System.out.printf("all %d records visible after %.1f s%n",
                            records, (System.nanoTime() - start) / 1e9);
                }
                if (reachedTarget && atEnd(consumer, partitions)) {
                    break;
                }
            }
            if (!reachedTarget) {
                problems.add("timed out with " + read + " of " + records + " records");
            }
        }
        int missing = 0;
        int duplicated = 0;
        for (int times : seen) {
            missing += times == 0 ? 1 : 0;
            duplicated += times > 1 ? 1 : 0;
        }
        System.out.printf("read %d records, %d keys; missing %d, duplicated %d%n",
                read, lastCount.size(), missing, duplicated);
        if (missing > 0 || duplicated > 0) {
            problems.add(missing + " input records missing, " + duplicated + " duplicated");
        }
        problems.stream().limit(20).forEach(problem -> System.out.println("FAIL " + problem));
        System.out.println(problems.isEmpty() ? "OK" : "FAILED with " + problems.size() + " problems");
        return problems.isEmpty();
    }

    /** Checks one output record {@code k<i % keys> -> "<i> <epoch ms> <count>"}. */
    private static void check(ConsumerRecord<String, String> record, int records, int keys,
            int[] seen, Map<String, Long> lastCount, List<String> problems) {
        String[] fields = record.value().split(" ");
        int input = fields.length == 3 ? Integer.parseInt(fields[0]) : -1;
        if (input < 0 || input >= records) {
            problems.add("unexpected record " + record.key() + " -> " + record.value());
            return;
        }
        seen[input]++;
        long count = Long.parseLong(fields[2]);
        if (!record.key().equals("k" + input % keys) || count != input / keys + 1) {
            problems.add("wrong key or count: " + record.key() + " -> " + record.value());
        }
        long previous = lastCount.getOrDefault(record.key(), 0L);
        if (count != previous + 1) {
            problems.add("key " + record.key() + ": count " + count + " after " + previous);
        }
        lastCount.put(record.key(), count);
    }

    /** True when the consumer has read every partition up to its last stable offset. */
    private static boolean atEnd(KafkaConsumer<String, String> consumer, List<TopicPartition> partitions) {
        Map<TopicPartition, Long> ends = consumer.endOffsets(partitions);
        Set<TopicPartition> assigned = consumer.assignment();
        return assigned.stream().allMatch(p -> consumer.position(p) >= ends.get(p));
    }
}
